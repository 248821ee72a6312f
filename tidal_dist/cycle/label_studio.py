"""al.oracle=label_studio: the queries go to a Label Studio project and the answers come back.

    push_tasks   (rank 0, once per stage) the project is created, or reused, with the dataset's
                 classes as single choices; the images of queries/<stage>/ are served through a
                 local-files storage, or, with al.label_studio_image_url, by URL from wherever
                 the user serves queries/; one task per query with `tidal_id` (our id), the strategy's
                 score, and, once a model exists, a pre-annotation in Label Studio's
                 `predictions` format (the predicted class, scored by the strategy's score) so a
                 person can sort by either.
    pull_labels  (rank 0) the project's tasks of that stage as Label Studio's JSON export. While
                 some are not annotated: LabelsPending (exit 3) saying how many are open. When all
                 are: every answer through the same checks as a labels file (cycle/oracle.py),
                 and only a whole, clean import is written, to labels/<stage>.json.
    open_tasks_note  (`tidal-dist status` of a run waiting on Label Studio) the server's current
                 count of open tasks of the waiting stage, or one line saying why it was not asked.

The server's URL is config (al.label_studio_url); the API token only ever comes from the
environment variable al.label_studio_token_env and is written nowhere. RUN_DIR/label_studio.json
remembers the project's id; the tasks of a stage are found by their data (`tidal_stage`,
`tidal_run`), so a push interrupted half-way is completed, not doubled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from tidal_dist.cycle.oracle import (INITIAL, LabelsPending, check_answers, describe,
                                     label_studio_answers, labels_path, queries_path, reject,
                                     stage_name)
from tidal_dist.data.manifest import Manifest
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_json, atomic_write_text, read_json

STATE_NAME = "label_studio.json"
CHOICES = "label"  # the Choices control's name: what the exports call the label column
IMAGE = "image"


def label_config(class_names: list[str]) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in class_names)
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n'
            f'  <Choices name="{CHOICES}" toName="{IMAGE}" choice="single" showInline="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def _client(cfg, **options):
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:
        raise UserError("al.oracle=label_studio needs the label-studio-sdk package: "
                        "pip install 'tidal_dist[label-studio]'") from None
    token = os.environ.get(cfg.al.label_studio_token_env, "")
    if not token:
        raise UserError(f"al.oracle=label_studio: set the environment variable "
                        f"{cfg.al.label_studio_token_env} to your Label Studio API token "
                        f"(Account & Settings; it is never read from a file or written anywhere)")
    return LabelStudio(base_url=cfg.al.label_studio_url.rstrip("/"), api_key=token, **options)


def _calling(cfg, what: str, call):
    """Run one request; a server that cannot be reached or refuses is the user's to fix."""
    try:
        return call()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - httpx / the SDK's ApiError: both name the cause
        status = getattr(e, "status_code", None)
        body = getattr(e, "body", None)
        detail = f"HTTP {status}: {body}" if status else f"{type(e).__name__}: {e}"
        hint = (f"; check the token in ${cfg.al.label_studio_token_env}" if status in (401, 403)
                else "")
        raise UserError(f"Label Studio at {cfg.al.label_studio_url} ({what}): {detail}{hint}"
                        ) from None


def _state(run_dir: Path) -> dict:
    path = run_dir / STATE_NAME
    return read_json(path) if path.exists() else {}


def project_id(cfg, client, run_dir: Path, manifest: Manifest) -> int:
    """The run's project: the one remembered in label_studio.json, else one with the same title
    and classes, else a new one."""
    state = _state(run_dir)
    config = label_config(list(manifest.class_names))
    if state.get("url") == cfg.al.label_studio_url and "project" in state:
        try:
            client.projects.get(id=state["project"])
            return int(state["project"])
        except Exception:  # noqa: BLE001 - deleted on the server: find or make another
            pass
    title = cfg.al.label_studio_project or f"tidal_dist {Path(cfg.run.dir).resolve().name}"
    found = None
    for project in _calling(cfg, "listing projects", lambda: list(client.projects.list())):
        if project.title == title:
            if (project.label_config or "").strip() != config.strip():
                raise UserError(f"Label Studio project '{title}' (id {project.id}) exists with "
                                f"other choices than this dataset's classes; rename it or set "
                                f"al.label_studio_project to another title")
            found = project.id
            break
    if found is None:
        created = _calling(cfg, "creating the project", lambda: client.projects.create(
            title=title, label_config=config,
            description=f"Active-learning queries of tidal_dist run {cfg.run.dir}"))
        found = created.id
    atomic_write_json(run_dir / STATE_NAME, {"url": cfg.al.label_studio_url, "project": found,
                                             "title": title})
    return int(found)


def _served_path(cfg, path: Path) -> str:
    root = Path(cfg.al.label_studio_document_root).resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise UserError(f"al.label_studio_document_root '{root}': the query images in "
                        f"'{path.parent}' are not under it; set it to the server's "
                        f"LOCAL_FILES_DOCUMENT_ROOT, a folder holding run.dir") from None


def _image_reference(cfg, queries_dir: Path, image: str) -> str:
    """What a task's `image` holds: a URL under al.label_studio_image_url when it is set (the
    path under queries/ URL-quoted part by part), else the local-files storage's path."""
    base = cfg.al.label_studio_image_url
    if base is not None:
        return base.strip().rstrip("/") + "/" + "/".join(quote(part, safe="")
                                                         for part in image.split("/"))
    return f"/data/local-files/?d={_served_path(cfg, queries_dir / image)}"


def _ensure_storage(cfg, client, project: int, folder: Path) -> None:
    """A local-files storage on the queries folder: Label Studio serves only files under one."""
    path = str(folder.resolve())
    existing = _calling(cfg, "listing storages",
                        lambda: list(client.import_storage.local.list(project=project)))
    if any(getattr(s, "path", None) == path for s in existing):
        return
    _calling(cfg, "adding a local-files storage", lambda: client.import_storage.local.create(
        project=project, path=path, title="tidal_dist queries", use_blob_urls=False))


def _stage_tasks(cfg, client, project: int, stage: int | str) -> list[dict]:
    """The project's tasks of this run and stage, with annotations (the full JSON export)."""
    def download() -> list:
        chunks = client.projects.exports.download_sync(project, export_type="JSON",
                                                       download_all_tasks=True)
        return json.loads(b"".join(chunks))

    tasks = _calling(cfg, "exporting the tasks", download)
    run = str(Path(cfg.run.dir).resolve())
    return [t for t in tasks if isinstance(t, dict) and isinstance(t.get("data"), dict)
            and t["data"].get("tidal_stage") == stage_name(stage)
            and t["data"].get("tidal_run") == run]


def _read_queries(run_dir: Path, stage: int | str) -> list[dict]:
    import csv

    with open(queries_path(run_dir, stage), newline="") as f:
        return list(csv.DictReader(f))


def push_tasks(cfg, run_dir: Path, stage: int | str, manifest: Manifest) -> None:
    """Rank 0: the stage's queries as tasks in the project (the ones not there yet)."""
    client = _client(cfg)
    project = project_id(cfg, client, run_dir, manifest)
    state = _state(run_dir)
    if stage_name(stage) in state.get("pushed", []):
        return
    queries_dir = queries_path(run_dir, stage).parent
    if cfg.al.label_studio_image_url is None:
        _ensure_storage(cfg, client, project, queries_dir)
    present = {str(t["data"].get("tidal_id")) for t in _stage_tasks(cfg, client, project, stage)}
    run = str(Path(cfg.run.dir).resolve())
    tasks = []
    for row in _read_queries(run_dir, stage):
        if row["id"] in present:
            continue
        score = float(row["score"])
        task = {"data": {IMAGE: _image_reference(cfg, queries_dir, row["image"]),
                         "tidal_id": int(row["id"]), "original_key": row["original_key"],
                         "score": score, "tidal_stage": stage_name(stage), "tidal_run": run}}
        if row["predicted_name"]:
            task["predictions"] = [{
                "model_version": f"tidal_dist {describe(stage)}", "score": score,
                "result": [{"from_name": CHOICES, "to_name": IMAGE, "type": "choices",
                            "value": {"choices": [row["predicted_name"]]}}]}]
        tasks.append(task)
    if tasks:
        _calling(cfg, "importing the tasks",
                 lambda: client.projects.import_tasks(project, request=tasks, return_task_ids=True))
    atomic_write_json(run_dir / STATE_NAME, {**state, "pushed": [*state.get("pushed", []),
                                                                 stage_name(stage)]})


def pull_labels(cfg, run_dir: Path, stage: int | str, manifest: Manifest, ids: np.ndarray) -> None:
    """Rank 0: labels/<stage>.json from the project once every task of the stage is annotated
    and the whole set passes the checks; LabelsPending (naming how many are open) before."""
    if labels_path(run_dir, stage, ".json").exists():
        return  # imported by an earlier invocation
    client = _client(cfg)
    project = project_id(cfg, client, run_dir, manifest)
    tasks = _stage_tasks(cfg, client, project, stage)
    open_tasks = [t for t in tasks if not t.get("annotations")]
    if open_tasks or not tasks:
        title = _state(run_dir).get("title", project)
        raise LabelsPending(
            f"{describe(stage)}: {len(open_tasks)} of {len(tasks)} Label Studio tasks still open "
            f"in project '{title}' ({cfg.al.label_studio_url}/projects/{project}); label them "
            f"and run the same command again")
    answers, problems = label_studio_answers(tasks)
    _, problems = check_answers(answers, problems, ids, manifest)
    if problems:
        raise reject(f"Label Studio project {project} ({describe(stage)})", problems)
    atomic_write_text(labels_path(run_dir, stage, ".json"), json.dumps(tasks, indent=1))


# `status` must answer promptly: one try, a short wait, then the recorded count.
STATUS_TIMEOUT_S = 15.0


def _waiting_stage(run_dir: Path, state: dict) -> str | None:
    """The stage a waiting run waits on: the last one pushed whose labels are not imported."""
    pending = [s for s in state.get("pushed", []) if not labels_path(run_dir, s, ".json").exists()]
    return pending[-1] if pending else None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def open_tasks_note(run_dir: Path, cfg=None) -> str | None:
    """`tidal-dist status` of a run waiting for labels: one line with the number of open tasks of
    the waiting stage as the server counts them now, or saying why the server was not asked (the
    status line above then holds the count recorded when the run stopped). None when the run's
    oracle is not Label Studio. `cfg` is the run's config; None reads RUN_DIR/config.yaml. Reads
    only: never creates a project, pushes or imports."""
    from dataclasses import replace

    from tidal_dist.config import RUN_CONFIG_NAME, load_config

    not_live = "Label Studio's open tasks not counted now"
    recorded = "the count above is the one recorded when the run stopped"
    run_dir = Path(run_dir).resolve()
    if cfg is None:
        try:
            cfg = load_config(run_dir / RUN_CONFIG_NAME)
        except UserError as e:
            return f"{not_live}: {_one_line(str(e))}; {recorded}"
    if cfg.al.oracle != "label_studio":
        return None
    cfg = replace(cfg, run=replace(cfg.run, dir=str(run_dir)))  # tasks name the run resolved
    try:
        state = _state(run_dir)
    except (OSError, ValueError) as e:
        return f"{not_live}: {run_dir / STATE_NAME} is unreadable ({e}); {recorded}"
    stage = _waiting_stage(run_dir, state)
    if not isinstance(state.get("project"), int) or stage is None:
        return (f"{not_live}: {run_dir / STATE_NAME} names no project with a stage waiting for "
                f"labels; {recorded}")
    if state.get("url") != cfg.al.label_studio_url:
        return (f"{not_live}: the project was made on {state.get('url')}, the config now names "
                f"{cfg.al.label_studio_url}; {recorded}")
    if not os.environ.get(cfg.al.label_studio_token_env):
        return (f"{not_live}: the environment variable {cfg.al.label_studio_token_env} (the API "
                f"token) is not set; {recorded}")
    try:
        client = _client(cfg, timeout=STATUS_TIMEOUT_S, max_retries=0)
        tasks = _stage_tasks(cfg, client, state["project"], stage)
    except UserError as e:
        return f"{not_live}: {_one_line(str(e))}; {recorded}"
    open_count = sum(1 for t in tasks if not t.get("annotations"))
    where = (f"project '{state.get('title', state['project'])}' "
             f"({cfg.al.label_studio_url}/projects/{state['project']})")
    what = describe(stage) if stage == INITIAL else f"cycle {stage.removeprefix('cycle_')}"
    if tasks and not open_count:
        return (f"Label Studio now: all {len(tasks)} tasks of {what} are annotated in {where}; "
                f"run the same command again to import them")
    return f"Label Studio now: {open_count} of {len(tasks)} tasks of {what} still open in {where}"
