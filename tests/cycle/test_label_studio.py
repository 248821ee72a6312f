"""al.oracle=label_studio against a real Label Studio server (127.0.0.1, SQLite, its own venv:
tests/label_studio_server.py): the project is created with the dataset's classes, the queries
are pushed with their images and predictions, a labeler logs in and annotates through the REST
API as the browser does, a damaged set of annotations is refused with nothing written, and the
run finishes with labels entered only in Label Studio; `tidal-dist predict` then labels the rest
of the pool. The pool is an image folder with no labels at all (pool/, no class folders, no
evaluation split): the labeler reads each image's class off its file name, as a person reads it
off the picture."""

from __future__ import annotations

import csv
import re
import subprocess

import numpy as np
import pytest

from tests import label_studio_server
from tests.mp import run_module, tail
from tidal_dist.data.manifest import load_keys, load_labels, load_manifest

CLASSES = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        label_studio_server.install()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        pytest.skip(f"label-studio {label_studio_server.VERSION} could not be installed into "
                    f"{label_studio_server.VENV}: {e}")
    folder = tmp_path_factory.mktemp("label-studio")
    s = label_studio_server.start(folder)
    yield s
    s.stop()


class Labeler:
    """A person in the browser: a session cookie from the login form, CSRF header on writes."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self.http = httpx.Client(base_url=url, follow_redirects=True, timeout=60)
        self.http.get("/user/login/")
        r = self.http.post("/user/login/", data={
            "email": label_studio_server.USER, "password": label_studio_server.PASSWORD,
            "csrfmiddlewaretoken": self.http.cookies.get("csrftoken")},
            headers={"Referer": f"{url}/user/login/"})
        assert r.status_code == 200 and "sessionid" in self.http.cookies, r.text[-500:]

    def personal_access_token(self) -> str:
        """Account & Settings > Personal Access Token, as the browser creates it."""
        r = self.http.post("/api/token/", headers=self._headers(), json={})
        assert r.status_code == 201, r.text[-500:]
        return r.json()["token"]

    def _headers(self) -> dict:
        return {"X-CSRFToken": self.http.cookies.get("csrftoken"), "Referer": self.url}

    def tasks(self, project: int) -> list[dict]:
        r = self.http.get("/api/tasks/", params={"project": project, "page_size": 1000,
                                                  "fields": "all"})
        assert r.status_code == 200, r.text[-500:]
        body = r.json()
        return body["tasks"] if isinstance(body, dict) else body

    def image(self, task: dict) -> bytes:
        r = self.http.get(task["data"]["image"])
        assert r.status_code == 200, r.text[-300:]
        return r.content

    def annotate(self, task_id: int, choice: str) -> int:
        r = self.http.post(f"/api/tasks/{task_id}/annotations/", headers=self._headers(), json={
            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                        "value": {"choices": [choice]}}], "lead_time": 2.5})
        assert r.status_code == 201, r.text[-500:]
        return r.json()["id"]

    def delete_annotation(self, annotation_id: int) -> None:
        r = self.http.delete(f"/api/annotations/{annotation_id}/", headers=self._headers())
        assert r.status_code == 204, r.text[-500:]


def queries(run_dir, stage):
    with open(run_dir / "queries" / f"{stage}.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(1200)  # six runs of the product, a server start (migrations: first time only)
def unlabeled_image_folder(base):
    """ROOT/pool/** with 60 PNGs and no class folders; each file's name says its class (c3_...)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(60):
        folder = base / "images" / "pool" / f"shoot{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            folder / f"c{i % CLASSES}_{i:03d}.png")
    (base / "classes.txt").write_text("".join(f"kind{c}\n" for c in range(CLASSES)))
    root = base / "shards"
    proc = run_module(["prepare", "--source", f"imagefolder:{base / 'images'}", "--classes",
                       str(base / "classes.txt"), "--out", str(root), "--shard-size", "16"])
    assert proc.returncode == 0, tail(proc)
    return root


def test_a_run_labeled_only_in_label_studio(server, tmp_path):
    root = unlabeled_image_folder(tmp_path)
    assert (load_labels(root, "pool") == -1).all()  # no label anywhere to read by mistake
    # what the labeler sees: the class is in the file name (pool/shoot1/c3_008.png -> 3)
    truth = np.array([int(key.rsplit("/", 1)[1][1]) for key in load_keys(root, "pool")])
    names = load_manifest(root).class_names
    run_dir = server.document_root / "run"
    labeler = Labeler(server.url)
    token = labeler.personal_access_token()
    env = {"LABEL_STUDIO_API_KEY": token}
    args = ["run", f"data.root={root}", "data.num_workers=0", "model.backbone=small_cnn",
            "model.width=4", "train.epochs=1", "train.batch_size=8", "al.initial=8",
            "al.budget=4", "al.cycles=2", "al.subset_size=40", "al.oracle=label_studio",
            f"al.label_studio_url={server.url}",
            f"al.label_studio_document_root={server.document_root}", f"run.dir={run_dir}"]

    missing_token = run_module(args)
    assert missing_token.returncode == 2 and "LABEL_STUDIO_API_KEY" in missing_token.stderr

    first = run_module(args, env=env)
    assert first.returncode == 3, tail(first)
    assert "8 of 8 Label Studio tasks still open" in first.stdout
    status = run_module(["status", str(run_dir)])
    assert status.returncode == 3 and "8 of 8 Label Studio tasks still open" in status.stdout
    project = int(re.search(r"/projects/(\d+)", first.stdout).group(1))

    tasks = labeler.tasks(project)
    initial = {int(r["id"]): r for r in queries(run_dir, "initial")}
    assert sorted(t["data"]["tidal_id"] for t in tasks) == sorted(initial)
    for t in tasks:  # the image Label Studio shows is the one in the shard
        row = initial[t["data"]["tidal_id"]]
        assert labeler.image(t) == (run_dir / "queries" / row["image"]).read_bytes()
    by_id = {t["data"]["tidal_id"]: t["id"] for t in tasks}

    for i in sorted(by_id)[:5]:
        labeler.annotate(by_id[i], names[truth[i]])
    partial = run_module(args, env=env)
    assert partial.returncode == 3 and "3 of 8 Label Studio tasks still open" in partial.stdout

    for i in sorted(by_id)[5:]:
        labeler.annotate(by_id[i], names[truth[i]])
    odd = sorted(by_id)[0]
    second_opinion = labeler.annotate(by_id[odd], names[(truth[odd] + 1) % 5])
    disagree = run_module(args, env=env)
    assert disagree.returncode == 2, tail(disagree)
    assert f"duplicate id {odd} with a different label" in disagree.stderr
    assert "nothing imported" in disagree.stderr
    assert not (run_dir / "labels").exists() and not (run_dir / "cycles").exists()

    labeler.delete_annotation(second_opinion)
    cycle0 = run_module(args, env=env)
    assert cycle0.returncode == 3, tail(cycle0)
    assert "4 of 4 Label Studio tasks still open" in cycle0.stdout
    with np.load(run_dir / "cycles" / "cycle_0000" / "labeled.npz") as lab:
        assert np.array_equal(lab["labels"], truth[lab["ids"]])  # what the labeler entered
    rows = {int(r["id"]): r for r in queries(run_dir, "cycle_0")}
    new = [t for t in labeler.tasks(project) if t["data"]["tidal_stage"] == "cycle_0"]
    assert sorted(t["data"]["tidal_id"] for t in new) == sorted(rows)
    for t in new:  # the model's class as a pre-annotation, scored by the strategy's score
        (prediction,) = t["predictions"]
        row = rows[t["data"]["tidal_id"]]
        assert prediction["result"][0]["value"]["choices"] == [row["predicted_name"]]
        assert prediction["score"] == pytest.approx(float(row["score"]))
        labeler.annotate(t["id"], names[truth[t["data"]["tidal_id"]]])

    done = run_module(args, env=env)
    assert done.returncode == 0, tail(done)
    with np.load(run_dir / "cycles" / "cycle_0001" / "labeled.npz") as lab:
        assert len(lab["ids"]) == 12 and np.array_equal(lab["labels"], truth[lab["ids"]])
    for path in run_dir.rglob("*"):  # the token is written nowhere
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert token.encode() not in path.read_bytes(), path

    out = run_dir / "predictions.csv"
    predicted = run_module(["predict", str(run_dir), "--out", str(out)])
    assert predicted.returncode == 0, tail(predicted)
    with open(out) as f:
        ids = [int(r["id"]) for r in csv.DictReader(f)]
    with np.load(run_dir / "cycles" / "cycle_0001" / "labeled.npz") as lab:
        assert ids == np.setdiff1d(load_manifest(root).split("pool").ids(), lab["ids"]).tolist()
