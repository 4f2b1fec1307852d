"""The `latentgen` command: data, generate, eval.

Each command group adds its sub-parser in its own ``_add_*`` function and runs
through a ``_run_*`` function that imports what it needs only when called, so
`latentgen --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys


# ---------------------------------------------------------------- data
def _add_data(sub):
    p = sub.add_parser("data", help="make or check image folders")
    dsub = p.add_subparsers(dest="data_cmd", required=True)

    s = dsub.add_parser("shapes", help="render the procedural shapes set as an image folder")
    s.add_argument("--out", required=True, help="folder to write (images + metadata.jsonl)")
    s.add_argument("--n", type=int, default=1000, help="number of images")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--include-heldout", action="store_true",
                   help="also draw the held-out colour-shape pairs (purple square, orange triangle, green circle)")

    e = dsub.add_parser("emoji", help="render every OpenMoji emoji as an image folder")
    e.add_argument("--out", required=True)
    e.add_argument("--size", type=int, default=64)

    c = dsub.add_parser("check", help="count usable image-caption pairs and list every skipped file")
    c.add_argument("folder")


def _run_data(args) -> int:
    if args.data_cmd == "shapes":
        from latentgen.data.shapes import write_shapes_folder

        n = write_shapes_folder(args.out, n=args.n, size=args.size, seed=args.seed,
                                include_heldout=args.include_heldout)
        print(f"wrote {n} images to {args.out}")
        return 0
    if args.data_cmd == "emoji":
        from latentgen.data.emoji import write_emoji_folder

        n = write_emoji_folder(args.out, size=args.size)
        print(f"wrote {n} emoji images to {args.out}")
        return 0
    if args.data_cmd == "check":
        from latentgen.data.folder import scan_folder

        report = scan_folder(args.folder)
        print(f"{len(report.items)} usable image-caption pairs in {args.folder}")
        for path, reason in report.skipped:
            print(f"skipped {path}: {reason}")
        if not report.items:
            print(f"error: no usable image-caption pair in {args.folder}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError(args.data_cmd)


# ---------------------------------------------------------------- main
_GROUPS = {"data": (_add_data, _run_data)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add, _ in _GROUPS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _GROUPS[args.cmd][1](args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
