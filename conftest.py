"""pytest set-up shared by unit tests and the nbval run of notebooks/.

Notebook kernels inherit this process's environment, so setting the variables here puts
every notebook in smoke mode too (unless the caller chose otherwise).
"""

import os

os.environ.setdefault("SORA_EDU_SMOKE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Two cores: more threads than cores only adds contention between the test process and kernels.
os.environ.setdefault("OMP_NUM_THREADS", "2")
