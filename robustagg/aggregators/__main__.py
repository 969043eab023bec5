"""``python -m robustagg.aggregators [FILE...]``: rewrite the generated rule table (default docs/index.md)."""

import sys

from robustagg.aggregators.registry import write_rule_table


def main(argv=None) -> None:
    for target in (sys.argv[1:] if argv is None else argv) or ["docs/index.md"]:
        print(f"{target}: {'rewritten' if write_rule_table(target) else 'up to date'}")


if __name__ == "__main__":
    main()
