"""``python -m hub``: the contract's other name for the ``wolfhub`` command.

It hands the process to the tools' package as ``python -m wolfhub`` would; nothing in
the library imports the tools (they stand on top of it).
"""

import runpy

runpy.run_module("wolfhub", run_name="__main__", alter_sys=True)
