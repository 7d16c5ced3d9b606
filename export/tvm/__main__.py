"""``python -m edgeship.export.tvm --tune JOB``: the tuning child (``export.tvm.tuning`` starts it)."""

import sys

from edgeship.export.tvm.metaschedule import child_main

sys.exit(child_main(sys.argv[1:]))
