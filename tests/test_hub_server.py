"""Tests of the local Hub test server (tests/hub_server.py) driven through huggingface_hub 2.4.0."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import huggingface_hub
import pytest
from hub_fixtures import hub_endpoint, hub_server, point_hf_hub_at  # noqa: F401 (fixtures)
from hub_server import READ_TOKEN, WRITE_TOKEN, HubServer
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

README = """---
license: mit
tags:
- eg3d
- test
library_name: my3dgen_hf
---
# Test model

Uploaded by tests/test_hub_server.py.
"""


def _unique(prefix: str = "repo") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sample_folder(tmp_path: Path) -> dict[str, bytes]:
    files = {
        "README.md": README.encode(),
        "config.json": b'{"resolution": 64, "channels": 3}\n',
        "weights/model.safetensors": os.urandom(2 * 1024 * 1024),
        "weights/notes.txt": b"hello\n",
    }
    root = tmp_path / "upload"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {"root": root, **files}  # type: ignore[dict-item]


@pytest.fixture(autouse=True)
def _no_server_errors(hub_server: HubServer):  # noqa: F811
    yield
    assert hub_server.errors == [], "\n".join(hub_server.errors)


def test_roundtrip_upload_download_history(hub_endpoint: str, sample_folder, tmp_path: Path) -> None:  # noqa: F811
    t0 = time.monotonic()
    root = sample_folder.pop("root")
    files: dict[str, bytes] = sample_folder
    api = HfApi(token=WRITE_TOKEN)  # endpoint comes from the patched constants
    assert api.endpoint == hub_endpoint

    repo_id = f"hub-test-user/{_unique()}"
    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.endpoint == hub_endpoint
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as exc_info:
        api.create_repo(repo_id)
    assert exc_info.value.response.status_code == 409

    first = api.upload_folder(repo_id=repo_id, folder_path=root, commit_message="first")
    assert len(first.oid) == 40

    # hf_hub_download of every file, byte-equal (no endpoint passed: uses the patched constants)
    for rel, data in files.items():
        path = hf_hub_download(repo_id, rel)
        assert Path(path).read_bytes() == data, rel
        assert str(tmp_path) in path  # downloads land in the temporary cache

    snap = Path(snapshot_download(repo_id))
    assert snap.name == first.oid
    for rel, data in files.items():
        assert (snap / rel).read_bytes() == data
    assert (snap / ".gitattributes").is_file()  # created with the repo, as on the Hub

    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == first.oid and info.private is False
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["weights/model.safetensors"] == 2 * 1024 * 1024
    assert info.card_data is not None and info.card_data.license == "mit"
    assert "eg3d" in info.tags
    assert huggingface_hub.model_info(repo_id).sha == first.oid  # module-level HfApi singleton is patched too
    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", *files])
    assert api.file_exists(repo_id, "weights/model.safetensors")
    assert not api.file_exists(repo_id, "nope.bin")
    assert api.repo_exists(repo_id)
    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, expand=True)}
    assert tree["weights/notes.txt"].blob_id == huggingface_hub.utils.sha.git_hash(b"hello\n")
    assert tree["weights/notes.txt"].last_commit.oid == first.oid
    top = [e.path for e in api.list_repo_tree(repo_id)]
    assert "weights" in top and "weights/notes.txt" not in top
    paths = api.get_paths_info(repo_id, ["config.json", "weights", "missing"])
    assert [p.path for p in paths] == ["config.json", "weights"]

    # second commit changes a file; the first commit still serves the old bytes
    second = api.upload_file(
        path_or_fileobj=b'{"resolution": 128}\n', path_in_repo="config.json", repo_id=repo_id, commit_message="second"
    )
    assert second.oid != first.oid
    assert Path(hf_hub_download(repo_id, "config.json")).read_bytes() == b'{"resolution": 128}\n'
    old = hf_hub_download(repo_id, "config.json", revision=first.oid)
    assert Path(old).read_bytes() == files["config.json"]
    assert api.model_info(repo_id, revision=first.oid).sha == first.oid
    assert Path(snapshot_download(repo_id, revision=first.oid)).name == first.oid
    assert [c.commit_id for c in api.list_repo_commits(repo_id)][:2] == [second.oid, first.oid]

    # unchanged re-upload is a no-op (preupload reports the remote oid)
    again = api.upload_folder(repo_id=repo_id, folder_path=root / "weights", path_in_repo="weights")
    assert again.oid == second.oid

    # deletions, branch, tag
    third = api.create_commit(
        repo_id,
        operations=[CommitOperationDelete("weights/"), CommitOperationAdd("extra/a.txt", b"a")],
        commit_message="delete weights",
    )
    assert "weights/notes.txt" not in api.list_repo_files(repo_id)
    api.create_branch(repo_id, branch="dev", revision=first.oid)
    api.create_tag(repo_id, tag="v1", revision=second.oid)
    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": third.oid, "dev": first.oid}
    assert Path(hf_hub_download(repo_id, "config.json", revision="v1")).read_bytes() == b'{"resolution": 128}\n'
    assert Path(hf_hub_download(repo_id, "weights/notes.txt", revision="dev")).read_bytes() == b"hello\n"
    assert time.monotonic() - t0 < 10


def test_not_found_errors(hub_endpoint: str) -> None:  # noqa: F811
    api = HfApi(token=WRITE_TOKEN)
    repo_id = api.create_repo(_unique()).repo_id
    api.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=repo_id)

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "dir/missing.bin", token=WRITE_TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"hub-test-user/{_unique('absent')}", "a.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"hub-test-user/{_unique('absent')}", "a.txt", token=READ_TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"someone/{_unique('absent')}")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "a.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "a.txt", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo_id, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(repo_id, revision="no-such-branch")
    assert not api.repo_exists(f"hub-test-user/{_unique('absent')}")
    assert not api.revision_exists(repo_id, "no-such-branch")
    assert api.revision_exists(repo_id, "main")


def test_auth_errors(hub_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    repo_id = HfApi(token=WRITE_TOKEN).create_repo(_unique()).repo_id
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "README.md").write_text(README)
    (folder / "w.bin").write_bytes(b"\0" * 1000)

    # no token: 401 on every write
    anon = HfApi()
    for call in (
        lambda: anon.upload_folder(repo_id=repo_id, folder_path=folder),
        lambda: anon.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id),
        lambda: anon.create_repo(_unique()),
    ):
        with pytest.raises(HfHubHTTPError) as exc_info:
            call()
        assert exc_info.value.response.status_code == 401
        assert not isinstance(exc_info.value, RepositoryNotFoundError)

    # read-only token: 403
    reader = HfApi(token=READ_TOKEN)
    for call in (
        lambda: reader.upload_folder(repo_id=repo_id, folder_path=folder),
        lambda: reader.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id),
        lambda: reader.create_repo(_unique()),
    ):
        with pytest.raises(HfHubHTTPError) as exc_info:
            call()
        assert exc_info.value.response.status_code == 403
    assert reader.create_repo(repo_id, exist_ok=True).repo_id == repo_id  # exists -> fine even read-only

    # unknown token: 401 even on reads
    with pytest.raises(HfHubHTTPError) as exc_info:
        HfApi(token="hf_bogus").model_info(repo_id)
    assert exc_info.value.response.status_code == 401

    # whoami
    me = HfApi(token=WRITE_TOKEN).whoami()
    assert me["name"] == "hub-test-user" and me["auth"]["accessToken"]["role"] == "write"
    assert HfApi(token=READ_TOKEN).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError):
        HfApi(token="hf_bogus").whoami()

    # HF_TOKEN env var is honoured (read at call time)
    os.environ["HF_TOKEN"] = WRITE_TOKEN
    try:
        HfApi().upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo_id)
    finally:
        del os.environ["HF_TOKEN"]
    assert "y.txt" in HfApi().list_repo_files(repo_id)


def test_private_repo_invisible_without_token(hub_endpoint: str) -> None:  # noqa: F811
    writer = HfApi(token=WRITE_TOKEN)
    repo_id = writer.create_repo(_unique("private"), private=True).repo_id
    writer.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=repo_id)
    assert writer.model_info(repo_id).private is True

    anon = HfApi()
    assert not anon.repo_exists(repo_id)
    assert not anon.file_exists(repo_id, "s.txt")
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        anon.list_repo_files(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "s.txt")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(repo_id)
    assert repo_id not in [m.id for m in anon.list_models(author="hub-test-user")]

    reader = HfApi(token=READ_TOKEN)
    assert reader.repo_exists(repo_id)
    assert Path(hf_hub_download(repo_id, "s.txt", token=READ_TOKEN)).read_bytes() == b"secret"


def test_repo_types_and_explicit_endpoint(hub_server: HubServer, hub_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    api = HfApi(endpoint=hub_server.endpoint, token=WRITE_TOKEN)  # explicit endpoint also works
    ds = api.create_repo(_unique("ds"), repo_type="dataset", private=True)
    assert ds.repo_type == "dataset" and ds.url.startswith(f"{hub_server.endpoint}/datasets/")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv", repo_id=ds.repo_id,
                    repo_type="dataset")
    path = hf_hub_download(ds.repo_id, "data/train.csv", repo_type="dataset", token=WRITE_TOKEN,
                           endpoint=hub_server.endpoint, cache_dir=tmp_path / "explicit_cache")
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    assert api.dataset_info(ds.repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):  # same id, wrong type
        api.model_info(ds.repo_id)

    space = api.create_repo(_unique("space"), repo_type="space", space_sdk="gradio")
    api.upload_file(path_or_fileobj=b"print('hi')\n", path_in_repo="app.py", repo_id=space.repo_id,
                    repo_type="space")
    assert api.space_info(space.repo_id).sdk == "gradio"
    snap = Path(snapshot_download(space.repo_id, repo_type="space"))
    assert (snap / "app.py").read_bytes() == b"print('hi')\n"


# huggingface_hub's own LFS PUT passes `data=<file>` to httpx2, which warns
@pytest.mark.filterwarnings("ignore:Use .content=.*:DeprecationWarning")
def test_lfs_upload_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With Xet disabled client-side, `lfs_threshold` exercises LFS batch + PUT + lfsFile commits."""
    from huggingface_hub import constants

    with HubServer(lfs_threshold=1024) as server:
        point_hf_hub_at(monkeypatch, server.endpoint, tmp_path / "hf_home")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        api = HfApi(token=WRITE_TOKEN)
        repo_id = api.create_repo(_unique("lfs")).repo_id
        big = os.urandom(300_000)
        folder = tmp_path / "lfs"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(big)
        (folder / "small.txt").write_bytes(b"small")
        api.upload_folder(repo_id=repo_id, folder_path=folder)
        assert any(m == "PUT" for m, _, _ in server.requests)
        entries = {f.path: f for f in api.list_repo_tree(repo_id)}
        assert entries["model.safetensors"].lfs is not None and entries["small.txt"].lfs is None
        assert Path(hf_hub_download(repo_id, "model.safetensors")).read_bytes() == big
        # same content again: the LFS object is already present -> no second PUT, and no-op commit
        nb_puts = sum(m == "PUT" for m, _, _ in server.requests)
        api.upload_file(path_or_fileobj=big, path_in_repo="copy.safetensors", repo_id=repo_id)
        assert sum(m == "PUT" for m, _, _ in server.requests) == nb_puts
        assert Path(hf_hub_download(repo_id, "copy.safetensors")).read_bytes() == big
        assert server.errors == []
    assert not server.running
