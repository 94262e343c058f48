"""What each family's block does, in the app's own words (the Build page's explanation panel).

Each family module writes its own notes (``Family.notes``); this is the name the pages import.
"""

from explorer.families import families

FAMILY_NOTES: dict[str, str] = {f.name: f.notes for f in families()}
