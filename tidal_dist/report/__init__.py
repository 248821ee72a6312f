"""`tidal-dist report RUN_DIR_OR_SWEEP_DIR... --out DIR`: compare strategies across seeds.

    collect.py      find runs, read their configs and metrics, group into protocols and series
    stats.py        mean / std / n over seeds, paired differences with Random, phase seconds
    tables.py       CSV + markdown tables
    plots.py        the figures (matplotlib Agg)
    datamaps.py     confidence / variability / correctness per labeled sample
    cartography.py  per-epoch TD in Dataset Cartography's JSONL format
    document.py     OUT/report.md (one page embedding the figures) and OUT/report.json
    output.py       --out checked, the report built in a hidden sibling folder and moved in whole

Each protocol (see collect.py) gets a folder OUT/<dataset>/ with its figures and tables.
"""

from __future__ import annotations

from pathlib import Path

from tidal_dist.job.errors import UserError


def report_main(paths: list[str], out: str | Path, cartography_max_classes: int = 100) -> int:
    from tidal_dist.report.collect import collect, group
    from tidal_dist.report.document import build_protocol, write_document
    from tidal_dist.report.output import staging_folder, write_staged

    runs, notes = collect(paths)
    if not runs:
        raise UserError(f"no run with a committed cycle under {', '.join(map(str, paths))}")
    protocols, group_notes = group(runs)
    notes += group_notes
    out = Path(out)

    def build(folder: Path):
        sections = [build_protocol(p, folder, cartography_max_classes) for p in protocols]
        return sections, write_document(folder, paths, runs, sections, notes)

    staging = staging_folder(out)
    sections, report = write_staged(out, build)
    for note in report["notes"]:
        print(f"tidal-dist report: note: {note}", flush=True)
    used = sum(len(s.runs) for p in protocols for s in p.series)
    print(f"tidal-dist report: {used} run(s), {len(protocols)} protocol(s): {out / 'report.md'}")
    for section in sections:
        figure = section.figures.get("accuracy")
        if figure:
            figure = out / Path(figure).relative_to(staging)
            print(f"tidal-dist report: comparison plot ({section.protocol.slug}): {figure}",
                  flush=True)
    return 0


__all__ = ["report_main"]
