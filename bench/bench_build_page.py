"""Build page responsiveness: re-render time after changing one widget, measured with AppTest.

Prints JSON: median seconds per re-render for the course ResNet-18 at 1×96×96 when the new spec
was never analysed (a fresh value each time) and when it was (cache hit), plus the first load.
Goals (issue 3): ≤ 0.300 s uncached, ≤ 0.050 s cached, on the 2-core CI machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(repeats: int = 9) -> dict:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    widget = next(w for w in at.number_input if w.key == "f_num_classes")
    # Warm-up: imports, the first torchinfo call, Plotly's templates.
    widget.set_value(11).run()

    uncached, cached = [], []
    for i in range(repeats):
        widget = next(w for w in at.number_input if w.key == "f_num_classes")
        t0 = time.perf_counter()
        widget.set_value(20 + i).run()  # a spec never seen before
        uncached.append(time.perf_counter() - t0)
    for i in range(repeats):
        widget = next(w for w in at.number_input if w.key == "f_num_classes")
        t0 = time.perf_counter()
        widget.set_value(20 + i).run()  # the same specs again: cache hits
        cached.append(time.perf_counter() - t0)
    assert not at.exception, at.exception
    return {"bench": "build_page_rerender", "model": "course_resnet18 at 1x96x96",
            "first_load_s": round(first, 3),
            "uncached_median_s": round(statistics.median(uncached), 4),
            "cached_median_s": round(statistics.median(cached), 4),
            "goal_uncached_s": 0.300, "goal_cached_s": 0.050, "repeats": repeats}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
