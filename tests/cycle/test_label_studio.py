"""al.oracle=label_studio against a real Label Studio server (127.0.0.1, SQLite, its own venv:
tests/label_studio_server.py): the project is created with the dataset's classes, the queries
are pushed with their images and predictions, a labeler logs in and annotates through the REST
API as the browser does, a damaged set of annotations is refused with nothing written, and the
run finishes with labels entered only in Label Studio; `tidal-dist predict` then labels the rest
of the pool. The pool is an image folder with no labels at all (pool/, no class folders, no
evaluation split): the labeler reads each image's class off its file name, as a person reads it
off the picture. `tidal-dist status` counts the open tasks on the server, live. With
al.label_studio_image_url the images are served by a plain web server (python -m http.server)
instead of Label Studio's local files."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import label_studio_server
from tests.mp import run_module, tail
from tidal_dist.cli import main
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


@pytest.fixture(scope="module")
def labeler(server):
    return Labeler(server.url)


@pytest.fixture(scope="module")
def token(labeler):
    return labeler.personal_access_token()


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory):
    return unlabeled_image_folder(tmp_path_factory.mktemp("pool"))


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

    def local_files_storages(self, project: int) -> list[dict]:
        r = self.http.get("/api/storages/localfiles/", params={"project": project})
        assert r.status_code == 200, r.text[-500:]
        return r.json()


def queries(run_dir, stage):
    with open(run_dir / "queries" / f"{stage}.csv") as f:
        return list(csv.DictReader(f))


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


@pytest.mark.timeout(1200)  # six runs of the product, a server start (migrations: first time only)
def test_a_run_labeled_only_in_label_studio(server, labeler, token, pool_root, tmp_path,
                                            capsys, monkeypatch):
    root = pool_root
    assert (load_labels(root, "pool") == -1).all()  # no label anywhere to read by mistake
    # what the labeler sees: the class is in the file name (pool/shoot1/c3_008.png -> 3)
    truth = np.array([int(key.rsplit("/", 1)[1][1]) for key in load_keys(root, "pool")])
    names = load_manifest(root).class_names
    run_dir = server.document_root / "run"
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
    project = int(re.search(r"/projects/(\d+)", first.stdout).group(1))
    code, said = status_now(run_dir, token, capsys, monkeypatch)  # the server's count, now
    assert code == 3 and "Label Studio now: 8 of 8 tasks of cycle 0's initial set still open" \
        in said, said

    tasks = labeler.tasks(project)
    initial = {int(r["id"]): r for r in queries(run_dir, "initial")}
    assert sorted(t["data"]["tidal_id"] for t in tasks) == sorted(initial)
    for t in tasks:  # the image Label Studio shows is the one in the shard
        row = initial[t["data"]["tidal_id"]]
        assert labeler.image(t) == (run_dir / "queries" / row["image"]).read_bytes()
    by_id = {t["data"]["tidal_id"]: t["id"] for t in tasks}

    labeler.annotate(by_id[min(by_id)], names[truth[min(by_id)]])
    code, said = status_now(run_dir, token, capsys, monkeypatch)
    assert code == 3 and "8 of 8 Label Studio tasks still open" in said, said  # the record
    assert "Label Studio now: 7 of 8 tasks of cycle 0's initial set still open" in said, said
    no_token = run_module(["status", str(run_dir)])  # the recorded count, and why not live
    assert no_token.returncode == 3 and not no_token.stderr, tail(no_token)
    assert "8 of 8 Label Studio tasks still open" in no_token.stdout
    assert "Label Studio now" not in no_token.stdout
    assert ("environment variable LABEL_STUDIO_API_KEY (the API token) is not set"
            in no_token.stdout)
    code, said = status_now(moved_server(run_dir, server.url, tmp_path), token, capsys,
                            monkeypatch)
    assert code == 3 and "8 of 8 Label Studio tasks still open" in said, said
    (why,) = [line for line in said.splitlines() if "not counted now" in line]
    assert "ConnectError" in why and "recorded" in why

    for i in sorted(by_id)[1:5]:
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


def status_now(run_dir, token, capsys, monkeypatch) -> tuple[int, str]:
    """`tidal-dist status RUN_DIR` with the token set, through the CLI's main in this process:
    the server is asked as from a separate process, without paying the product's imports again
    (a real process checks the no-token case above)."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    capsys.readouterr()
    try:
        code = main(["status", str(run_dir)])
    finally:
        monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    return code, capsys.readouterr().out


def moved_server(run_dir, url, tmp_path):
    """A copy of a waiting run whose config and project name a server that is down (a port
    nobody listens on): what `status` sees when Label Studio cannot be reached."""
    copy = tmp_path / "moved"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("queries"))
    dead = f"http://127.0.0.1:{label_studio_server.free_port()}"
    for name in ("config.yaml", "label_studio.json"):
        (copy / name).write_text((copy / name).read_text().replace(url, dead))
    return copy


@pytest.mark.timeout(300)
def test_images_served_by_url(server, labeler, token, pool_root, tmp_path):
    """al.label_studio_image_url: RUN_DIR/queries/ served by a web server of the user's (here
    python -m http.server), the tasks name its URLs, the project has no local-files storage, and
    the run dir need not be under Label Studio's document root."""
    run_dir = tmp_path / "images_by_url"
    port = label_studio_server.free_port()
    base = f"http://127.0.0.1:{port}/"
    first = run_module(["run", f"data.root={pool_root}", "data.num_workers=0",
                        "model.backbone=small_cnn", "model.width=4", "train.epochs=1",
                        "al.initial=4", "al.budget=2", "al.cycles=1", "al.subset_size=40",
                        "al.oracle=label_studio", f"al.label_studio_url={server.url}",
                        f"al.label_studio_image_url={base}", f"run.dir={run_dir}"],
                       env={"LABEL_STUDIO_API_KEY": token})
    assert first.returncode == 3 and "4 of 4 Label Studio tasks still open" in first.stdout, \
        tail(first)
    project = int(re.search(r"/projects/(\d+)", first.stdout).group(1))
    assert labeler.local_files_storages(project) == []

    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                            "127.0.0.1", "--directory", str(run_dir / "queries")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and web.poll() is None, "no http.server"
                time.sleep(0.2)
        rows = {int(r["id"]): r for r in queries(run_dir, "initial")}
        tasks = labeler.tasks(project)
        assert sorted(t["data"]["tidal_id"] for t in tasks) == sorted(rows)
        for t in tasks:
            image = rows[t["data"]["tidal_id"]]["image"]
            assert t["data"]["image"] == base + image  # initial/<id>_<key>.png: nothing to quote
            served = httpx.get(t["data"]["image"], timeout=30)
            assert served.status_code == 200
            assert served.content == (run_dir / "queries" / image).read_bytes()
    finally:
        web.terminate()
        web.wait(timeout=30)
