"""Write REPRODUCTIONS.md: every paper claim next to our number, from the results files.

    python scripts/reproductions.py                 # the table from benchmarks/results/*.json
    python scripts/reproductions.py --quick         # re-measure the quick rows first (about a minute)
    python scripts/reproductions.py --measure factual active_dormant frames lre sat   # the slower rows

``--quick`` writes ``benchmarks/results/reproductions_quick.json``; ``--measure`` merges its sections
into ``benchmarks/results/reproductions.json``. Every other number comes from the benchmark that
owns it (each row names its command). A row whose file or key is missing reads "not yet measured".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="re-measure the quick rows (loads SmolLM2)")
    ap.add_argument("--quick-sections", nargs="+", default=None, help="subset of the quick sections")
    ap.add_argument("--measure", nargs="+", default=[], metavar="SECTION",
                    help="slower measurements: factual, active_dormant, frames, lre, sat (see lab/reproductions/measure.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "REPRODUCTIONS.md")
    args = ap.parse_args(argv)

    import torch

    from lab.reproductions import reproduction_table
    from workbench.paths import atomic_write_json

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.quick or args.measure:
        torch.set_num_threads(args.threads)
        import workbench as wb

        model = wb.load()
        if args.quick:
            from lab.reproductions.quick import SECTIONS, run_quick

            res = run_quick(model, sections=args.quick_sections or SECTIONS, log=log)
            atomic_write_json(args.results / "reproductions_quick.json", res)
        if args.measure:
            from lab.reproductions.measure import run_measure

            path = args.results / "reproductions.json"
            for section in args.measure:  # saved after each section, so a long run keeps what it finished
                old = json.loads(path.read_text()) if path.exists() else {}
                atomic_write_json(path, {**old, **run_measure(model, [section], log=log)})
    table = reproduction_table(args.results)
    table.write_markdown(args.out)
    print(f"wrote {args.out}: {table.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
