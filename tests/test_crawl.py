"""The crawl command without the network: icrawler's parser and downloader replaced by local stand-ins."""

import csv
import json
import socket
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from icrawler import Parser
from PIL import Image

from streetlib.data import crawl
from streetlib.data.crawl import CrawlError, ManifestDownloader, city_keyword, crawl_cities, crawl_filters, load_cities

CITIES_YAML = """\
name: two-cities
regions:
  east: [tokyo]
  west: [new-york]
queries:
  new-york: New York City street
"""


class LocalWeb:
    """The network, offline: image URLs serve local files, any other URL is an empty search page.

    Records every URL requested, so tests see exactly what the crawler asked for.
    """

    def __init__(self, files_by_city):
        self.images = {f"https://img.test/{city}/{p.name}": p for city, paths in files_by_city.items() for p in paths}
        self.requests = []

    def get(self, url, timeout=None, **kwargs):
        self.requests.append(url)
        content = self.images[url].read_bytes() if url in self.images else b"<html></html>"
        return SimpleNamespace(status_code=200, content=content, url=url)

    def pages(self):
        return [parse_qs(urlsplit(u).query) for u in self.requests if u not in self.images]

    def image_requests(self):
        return [u for u in self.requests if u in self.images]


def stand_ins(web):
    """A parser listing the city's local images for any result page, and a downloader fetching from ``web``."""

    class LocalParser(Parser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.session = web

        def parse(self, response):
            keyword = parse_qs(urlsplit(response.url).query)["q"][0]
            city = "new-york" if keyword.startswith("New York") else keyword.split()[0].lower()
            return [{"file_url": url} for url in web.images if f"/{city}/" in url]

    class LocalDownloader(ManifestDownloader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.session = web

    return LocalParser, LocalDownloader


def _photo(path, seed, size=(96, 128)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "web"
    src.mkdir()
    return {
        "tokyo": [_photo(src / f"t{i}.jpg", i) for i in range(4)],
        "new-york": [_photo(src / f"n{i}.png", 10 + i) for i in range(4)],
    }


@pytest.fixture
def cities_file(tmp_path):
    path = tmp_path / "cities.yaml"
    path.write_text(CITIES_YAML)
    return path


@pytest.fixture
def offline_ok(monkeypatch):
    monkeypatch.setattr(crawl, "check_online", lambda *args, **kwargs: None)


def _manifest(out):
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_city_keyword_follows_the_original_pattern():
    assert city_keyword("tokyo") == "Tokyo street -fashion -food -painting -art -graffiti"
    assert city_keyword("new-york", query="NYC street", exclude=["food"]) == "NYC street -food"
    with pytest.raises(ValueError, match="`exclude` words"):
        city_keyword("tokyo", exclude=["street art"])


def test_load_cities_reads_queries_and_exclusions(tmp_path, cities_file):
    spec, keywords = load_cities(cities_file)
    assert spec.classes == ("tokyo", "new-york")
    assert keywords["new-york"] == "New York City street -fashion -food -painting -art -graffiti"
    assert keywords["tokyo"].startswith("Tokyo street -fashion")

    no_excl = tmp_path / "plain.yaml"
    no_excl.write_text(CITIES_YAML + "exclude: []\n")
    assert load_cities(no_excl)[1]["tokyo"] == "Tokyo street"

    bad = tmp_path / "bad.yaml"
    bad.write_text(CITIES_YAML.replace("new-york: New", "paris: New"))
    with pytest.raises(ValueError, match=r"queries for \['paris'\]"):
        load_cities(bad)


def test_crawl_filters_validate_names_and_values():
    assert crawl_filters() == {"type": "photo", "license": "noncommercial,modify"}
    assert crawl_filters(engine="bing", license="publicdomain")["license"] == "publicdomain"
    assert crawl_filters(license=None) == {"type": "photo"}
    # The original's bug: a misspelt filter name that the crawler silently dropped.
    with pytest.raises(ValueError, match=r"Unknown search filter\(s\) \['licence'\]"):
        crawl_filters(filters={"licence": "noncommercial"})
    with pytest.raises(ValueError, match='filter option "license" must be one of'):
        crawl_filters(license="free")
    with pytest.raises(ValueError, match="Invalid `engine`"):
        crawl_filters(engine="altavista")


def test_invalid_arguments_fail_before_any_request(tmp_path, cities_file):
    # No check_online stand-in: reaching the network check would raise CrawlError instead.
    out = tmp_path / "raw"
    with pytest.raises(ValueError, match="per_city"):
        crawl_cities(cities_file, out, per_city=0)
    with pytest.raises(ValueError, match="min_size"):
        crawl_cities(cities_file, out, per_city=2, min_size=0)
    with pytest.raises(ValueError, match="license"):
        crawl_cities(cities_file, out, per_city=2, license="noncomercial")
    with pytest.raises(FileNotFoundError, match="Class spec file not found"):
        crawl_cities(tmp_path / "missing.yaml", out, per_city=2)
    assert not out.exists()


def test_offline_fails_with_one_clear_line(tmp_path, cities_file, monkeypatch):
    # A bound but not listening socket refuses connections at once, with or without a network.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.setitem(crawl.ENGINES, "google", crawl.ENGINES["google"]._replace(url=url))
        with pytest.raises(CrawlError) as info:
            crawl_cities(cities_file, tmp_path / "raw", per_city=2, timeout=2)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot reach google")
    assert "crawling needs internet access" in message and f"{tmp_path / 'raw'}/<city>/ by hand" in message
    assert not (tmp_path / "raw").exists()


def test_crawl_sends_keyword_and_licence_filter_and_writes_manifest(tmp_path, cities_file, sources, offline_ok):
    web = LocalWeb(sources)
    parser_cls, downloader_cls = stand_ins(web)
    out = tmp_path / "raw"
    counts = crawl_cities(
        cities_file, out, per_city=3, min_size=32, threads=2, parser_cls=parser_cls, downloader_cls=downloader_cls
    )

    assert counts == {"tokyo": {"before": 0, "after": 3}, "new-york": {"before": 0, "after": 3}}
    pages = web.pages()
    assert [p["q"][0] for p in pages] == [
        "Tokyo street -fashion -food -painting -art -graffiti",
        "New York City street -fashion -food -painting -art -graffiti",
    ]
    # The licence filter reaches the request: Google's "sur:fm" is noncommercial reuse with modification.
    assert all(p["tbs"] == ["itp:photo,sur:fm"] for p in pages)

    rows = _manifest(out)
    assert len(rows) == 6
    for row in rows:
        assert (out / row["file"]).is_file()
        assert row["url"] in web.images and f"/{row['city']}/" in row["url"]
        assert row["file"].startswith(row["city"] + "/")
        assert json.loads(row["filters"]) == {"type": "photo", "license": "noncommercial,modify"}
        assert row["engine"] == "google"
        assert (out / row["file"]).read_bytes() == web.images[row["url"]].read_bytes()
    assert (out / "classes.yaml").is_file()


def test_min_size_keeps_small_images_out(tmp_path, cities_file, sources, offline_ok):
    sources["tokyo"].append(_photo(tmp_path / "web" / "tiny.jpg", 99, size=(20, 30)))
    web = LocalWeb(sources)
    parser_cls, downloader_cls = stand_ins(web)
    crawl_cities(
        cities_file, tmp_path / "raw", per_city=10, min_size=64, parser_cls=parser_cls, downloader_cls=downloader_cls
    )
    urls = {row["url"] for row in _manifest(tmp_path / "raw")}
    assert "https://img.test/tokyo/tiny.jpg" in web.image_requests()
    assert "https://img.test/tokyo/tiny.jpg" not in urls
    assert len(urls) == 8


def test_second_run_adds_only_what_is_missing(tmp_path, cities_file, sources, offline_ok):
    web = LocalWeb(sources)
    parser_cls, downloader_cls = stand_ins(web)
    out = tmp_path / "raw"
    run = dict(min_size=32, threads=2, parser_cls=parser_cls, downloader_cls=downloader_cls)
    crawl_cities(cities_file, out, per_city=2, **run)
    first = {row["file"]: row["url"] for row in _manifest(out)}
    contents = {f: (out / f).read_bytes() for f in first}
    (out / "new-york" / "by-hand.jpg").write_bytes(sources["tokyo"][0].read_bytes())

    counts = crawl_cities(cities_file, out, per_city=3, **run)

    assert counts == {"tokyo": {"before": 2, "after": 3}, "new-york": {"before": 3, "after": 3}}
    rows = _manifest(out)
    assert {r["file"]: r["url"] for r in rows[: len(first)]} == first
    assert all((out / f).read_bytes() == data for f, data in contents.items())
    added = rows[len(first) :]
    assert len(added) == 1 and added[0]["city"] == "tokyo"
    assert added[0]["url"] not in first.values()
    assert added[0]["file"] == "tokyo/000003.jpg"
    assert len({r["url"] for r in rows}) == len(rows)

    requests_before = len(web.requests)
    counts = crawl_cities(cities_file, out, per_city=3, **run)
    assert counts == {"tokyo": {"before": 3, "after": 3}, "new-york": {"before": 3, "after": 3}}
    assert len(web.requests) == requests_before
