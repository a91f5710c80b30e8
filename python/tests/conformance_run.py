"""Runs LangGraph's checkpointer conformance suite (langgraph-checkpoint-conformance) against
CkptSaver on the store URLs given as arguments; exits non-zero unless every base and extended
capability passes on each."""

import asyncio
import sys

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from ckpt_langgraph import CkptSaver, Store


def fresh_urls(base: str):
    """A new store per capability suite: memory is new per open; the others get a fresh name."""
    n = 0
    while True:
        n += 1
        if base == "memory://":
            yield base
        else:
            yield base.replace("{n}", str(n))


async def run(base: str) -> bool:
    urls = fresh_urls(base)

    @checkpointer_test(name=f"CkptSaver on {base.split(':')[0]}")
    async def saver():
        yield CkptSaver(Store.open(next(urls)))

    report = await validate(saver, progress=ProgressCallbacks.verbose())
    report.print_report()
    return report.passed_all_base() and report.passed_all()


def main() -> int:
    ok = True
    for base in sys.argv[1:]:
        ok = asyncio.run(run(base)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
