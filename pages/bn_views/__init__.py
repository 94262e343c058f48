"""The Batch norm page's views, one module per tab (pages/bn_lab.py draws the tabs).

Streamlit's pages-directory scan reads only the top-level ``pages/*.py`` files
(``pages_folder.glob("*.py")`` in streamlit/runtime/scriptrunner/script_runner.py), so this
package is never listed as a page of its own.
"""
