"""The phone's page and its demo shards, as `fedyolo serve` serves them."""

from __future__ import annotations

import json
from collections.abc import Callable

from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.web import DEMO_DIR, WEB_DIR, page_qr
from fedyolo.runtime.manifest import sha256_file
from tests.fedserver.conftest import Api


def test_the_page_is_served_cross_origin_isolated(make_api: Callable[..., Api]) -> None:
    # Prepare
    api = make_api()
    auth = api.register()
    # Execute
    page = api.http.get("/app/")
    wasm = api.http.get("/app/ort/ort-training-wasm-simd-threaded.wasm")
    root = api.http.get("/", follow_redirects=False)
    hot = [
        api.http.get("/v1/tasks/topics/round", headers=auth),
        api.http.get("/v1/tasks/topics/modules/0", headers=auth),
    ]
    # Assert: the built page, and the headers that let it use wasm threads, on every answer (the round and
    # module answers come from HotRoutes, ahead of FastAPI's middleware)
    assert page.status_code == 200 and "<title>fedyolo" in page.text
    assert wasm.content == (WEB_DIR / "ort" / "ort-training-wasm-simd-threaded.wasm").read_bytes()
    assert [r.status_code for r in hot] == [200, 200]
    for response in (page, wasm, api.http.get("/healthz"), *hot):
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
        assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    assert root.status_code == 307 and root.headers["location"] == "/app/"


def test_each_phone_gets_its_own_demo_shard(make_api: Callable[..., Api], config: ServerConfig) -> None:
    # Prepare: two shards, as `serve --web-demo 2` writes them
    shards = [{"train": [["a", f"text {i}"]], "held_out": [["b", f"held {i}"]]} for i in range(2)]
    (config.state_dir / DEMO_DIR).mkdir(parents=True)
    (config.state_dir / DEMO_DIR / "topics.json").write_text(json.dumps({"shards": shards}))
    api = make_api()
    # Execute
    phones = [api.register() for _ in range(2)]
    got = [api.http.get("/v1/web/demo/topics", headers=auth).json() for auth in phones]
    anonymous = api.http.get("/v1/web/demo/topics")
    other = api.http.get("/v1/web/demo/language", headers=phones[0])
    # Assert
    assert sorted(g["train"][0][1] for g in got) == ["text 0", "text 1"]
    assert anonymous.status_code == 401
    assert other.status_code == 404 and "--web-demo" in other.json()["detail"]


def test_the_committed_page_is_the_build_it_lists() -> None:
    # The build writes SHA256SUMS of what it copied: a hand edit of fedserver/web shows up here.
    sums = dict(line.split("  ")[::-1] for line in (WEB_DIR / "SHA256SUMS").read_text().splitlines())
    shipped = {p.relative_to(WEB_DIR).as_posix(): p for p in WEB_DIR.rglob("*") if p.is_file()}
    assert set(shipped) - {"SHA256SUMS"} == set(sums)
    assert {name: sha256_file(shipped[name]) for name in sums} == sums


def test_the_pages_address_is_drawn_as_a_qr_code_a_camera_can_read() -> None:
    # Prepare: the QR symbol the terminal drawing must reproduce, module by module
    import segno

    url = "http://192.168.1.20:8080/app/#enroll=abcdefghijklmnopqrst"
    symbol = [list(row) for row in segno.make(url, error="l").matrix]
    # Execute
    drawing = page_qr(url).splitlines()
    # Assert: each character is two modules stacked (upper, lower); dark modules are blank on the
    # terminal's light-on-dark blocks, i.e. '█' is two light modules (the border included)
    halves = {"█": (0, 0), "▀": (0, 1), "▄": (1, 0), " ": (1, 1)}
    border = 2
    size = len(symbol) + 2 * border
    read = [[0] * size for _ in range(2 * len(drawing))]
    for y, line in enumerate(drawing):
        assert len(line) == size
        for x, ch in enumerate(line):
            read[2 * y][x], read[2 * y + 1][x] = halves[ch]
    inner = [row[border : border + len(symbol)] for row in read[border : border + len(symbol)]]
    assert inner == symbol
