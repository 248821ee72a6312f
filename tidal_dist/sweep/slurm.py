"""`tidal-dist sweep --slurm`: an array-job script with one task per planned run.

The template is launch/slurm/sweep.sbatch in the source tree; its @NAMES@ are filled in with
shell-quoted values and the result is written to OUT/sweep.sbatch (and OUT/slurm/ made for the
task logs, which SLURM does not create).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_text
from tidal_dist.sweep.plan import Sweep

TEMPLATE = Path(__file__).resolve().parents[2] / "launch" / "slurm" / "sweep.sbatch"
SCRIPT_NAME = "sweep.sbatch"


def render(sweep: Sweep, template: Path = TEMPLATE) -> str:
    if not template.is_file():
        raise UserError(f"--slurm: the template {template} is missing (it ships in the source "
                        f"tree's launch/slurm/; run from a checkout)")
    text = template.read_text()
    values = {"@JOB_NAME@": f"sweep-{sweep.out.name}"[:60], "@SWEEP_DIR@": str(sweep.out),
              "@WORKDIR@": sweep.cwd, "@PYTHON@": sys.executable}
    lines = []
    for line in text.splitlines(keepends=True):
        for name, value in values.items():
            # #SBATCH lines are read by sbatch, not the shell: bare values, no quoting.
            line = line.replace(name, value if line.startswith("#SBATCH") else shlex.quote(value))
        lines.append(line)
    return "".join(lines)


def write_script(sweep: Sweep) -> tuple[Path, str]:
    """Write OUT/sweep.sbatch; return its path and the sbatch line that submits every run."""
    path = sweep.out / SCRIPT_NAME
    atomic_write_text(path, render(sweep))
    path.chmod(0o755)
    (sweep.out / "slurm").mkdir(parents=True, exist_ok=True)
    line = f"sbatch --array=0-{len(sweep.runs) - 1} {shlex.quote(str(path))}"
    return path, line
