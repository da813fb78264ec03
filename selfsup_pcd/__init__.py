"""selfsup_pcd: self-supervised point-cloud representation learning (MVR, STRL)."""

import os

# Transparent huge pages for torch's CPU allocator: training steps allocate large temporaries every
# step and otherwise spend most of their time in page faults (measured 1.4-2.4x on 2-core CPUs).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
