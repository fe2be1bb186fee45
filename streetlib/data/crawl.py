"""Crawling street photos per city from an image search engine with icrawler: resumable, with a manifest.

The cities file is a class-spec YAML (see `streetlib.classes`) with two optional keys::

    name: my-cities
    regions:
      western: [lisbon, nyc]
      eastern: [hanoi, osaka]
    queries:                # search text per city; default "<City> street"
      nyc: New York City street
    exclude: [fashion, food, painting, art, graffiti]   # words excluded from every search (the default)

so the search for Lisbon is ``"Lisbon street -fashion -food -painting -art -graffiti"``, the original's pattern.

Written to ``out``, and read by `streetlib.data.build.build_dataset`::

    out/classes.yaml          the class spec
    out/<city>/000001.jpg     the photos, numbered per city
    out/manifest.csv          one row per downloaded file: file, city, url, keyword, engine, filters

Searches ask for photos (``type: photo``) under a licence filter (``noncommercial,modify`` by default). Filter names
and values are checked against icrawler's own table before anything runs: the original spelt the filter so that it
was silently dropped. A second run counts what each city folder already holds (photos put there by hand count too)
and fetches only the missing ones, skipping every URL already in the manifest.
"""

import csv
import json
import logging
from pathlib import Path
from typing import NamedTuple

import requests
import yaml
from icrawler import Crawler, ImageDownloader
from icrawler.builtin import BingImageCrawler, GoogleImageCrawler
from icrawler.builtin.bing import BingFeeder
from icrawler.builtin.google import GoogleFeeder
from icrawler.utils import Signal

from streetlib.classes import ClassSpec, get_class_spec
from streetlib.data.build import MANIFEST_FIELDS, RAW_MANIFEST, read_manifest
from streetlib.paths import atomic_path

DEFAULT_EXCLUDE = ("fashion", "food", "painting", "art", "graffiti")
DEFAULT_LICENSE = "noncommercial,modify"


class Engine(NamedTuple):
    crawler: type
    feeder: type
    url: str


ENGINES = {
    "google": Engine(GoogleImageCrawler, GoogleFeeder, "https://www.google.com"),
    "bing": Engine(BingImageCrawler, BingFeeder, "https://www.bing.com"),
}


class CrawlError(RuntimeError):
    """The search engine cannot be reached."""


class ManifestDownloader(ImageDownloader):
    """icrawler's image downloader that skips URLs it already has and records every saved file in the manifest.

    icrawler builds it with ``extra_downloader_args``: ``manifest`` (Path of the CSV), ``city``, ``keyword``,
    ``engine``, ``filters`` (dict) and ``known_urls`` (a set shared across cities, updated in place).
    """

    def __init__(self, thread_num, signal, session, storage, *, manifest, city, keyword, engine, filters, known_urls):
        super().__init__(thread_num, signal, session, storage)
        self.manifest = Path(manifest)
        self.row = {"city": city, "keyword": keyword, "engine": engine, "filters": json.dumps(filters)}
        self.known_urls = known_urls
        self.reserved = 0

    def download(self, task, default_ext, timeout=5, max_retry=3, overwrite=False, **kwargs):
        task["success"] = False
        with self.lock:
            # A URL is claimed before fetching so that no two threads fetch it, and a slot is reserved so that
            # parallel threads never save more than max_num (icrawler checks the count only after fetching).
            # A URL that fails stays out of the manifest and is tried again by the next run.
            if task["file_url"] in self.known_urls or self.reserved >= self.max_num:
                return
            self.known_urls.add(task["file_url"])
            self.reserved += 1
        super().download(task, default_ext, timeout=timeout, max_retry=max_retry, overwrite=overwrite, **kwargs)
        with self.lock:
            if not task["success"]:
                self.reserved -= 1
            elif self.fetched_num >= self.max_num:
                # Stops the parser fetching more result pages.
                self.signal.set(reach_max_num=True)

    def process_meta(self, task):
        if not task.get("success"):
            return
        with self.lock:
            new = not self.manifest.is_file()
            with self.manifest.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
                if new:
                    writer.writeheader()
                file_id = f"{self.row['city']}/{task['filename']}"
                writer.writerow({"file": file_id, "url": task["file_url"], **self.row})


def city_keyword(city, *, query=None, exclude=DEFAULT_EXCLUDE):
    """The search text for one city: ``"<City> street -fashion -food -painting -art -graffiti"`` by default.

    Args:
        city: str, the class name ('tokyo', 'new-york').
        query: optional str replacing ``"<City> street"``.
        exclude: sequence of single words the engine must leave out.
    """
    bad = [w for w in exclude if not isinstance(w, str) or not w or " " in w or w.startswith("-")]
    if bad:
        raise ValueError(f"Invalid `exclude` words {bad}: each must be one word, without a leading '-'.")
    base = query or f"{city.replace('-', ' ').replace('_', ' ').title()} street"
    return " ".join([base, *(f"-{w}" for w in exclude)])


def load_cities(cities):
    """Read a cities file.

    Args:
        cities: a YAML path (a class spec with optional ``queries`` and ``exclude``, see the module docstring),
            a `ClassSpec`, or a built-in name ('street10').

    Returns:
        (`ClassSpec`, dict city -> search keyword).
    """
    extra = {}
    if not isinstance(cities, ClassSpec) and Path(str(cities)).suffix in (".yaml", ".yml"):
        extra = yaml.safe_load(Path(cities).read_text()) if Path(cities).is_file() else {}
    spec = get_class_spec(cities)
    queries = extra.get("queries") or {}
    exclude = extra.get("exclude", list(DEFAULT_EXCLUDE))
    if not isinstance(queries, dict) or not isinstance(exclude, list):
        raise ValueError(f"Invalid cities file {cities}: `queries` must map city -> text, `exclude` list words.")
    unknown = sorted(set(queries) - set(spec.classes))
    if unknown:
        raise ValueError(f"Cities file {cities} has queries for {unknown}, which are not among its cities.")
    return spec, {c: city_keyword(c, query=queries.get(c), exclude=exclude) for c in spec.classes}


def crawl_filters(*, engine="google", license=DEFAULT_LICENSE, filters=None):
    """The search filters sent to ``engine``, checked against icrawler's filter table.

    Args:
        engine: 'google' or 'bing'.
        license: a licence filter value ('noncommercial', 'commercial', 'noncommercial,modify',
            'commercial,modify'; bing also 'creativecommons', 'publicdomain'), or None for no licence filter.
        filters: optional dict of more icrawler filters, e.g. ``{"size": "large"}``.

    Returns:
        dict name -> value, always with ``type: photo``.

    Raises:
        ValueError: an unknown filter name or value (icrawler itself would drop the search in a worker thread).
    """
    feeder = _engine(engine).feeder(1, Signal(), None)
    rules = feeder.get_filter().rules
    chosen = {"type": "photo", **({"license": license} if license is not None else {}), **(filters or {})}
    unknown = [name for name in chosen if name not in rules]
    if unknown:
        raise ValueError(f"Unknown search filter(s) {unknown} for {engine}. Expected names: {sorted(rules)}.")
    try:
        feeder.get_filter().apply(chosen)
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        raise ValueError(f"Invalid search filter for {engine}: {err}") from err
    return chosen


def check_online(engine="google", *, out_dir="DIR", timeout=5.0):
    """Raise `CrawlError` with one line of advice when ``engine`` cannot be reached within ``timeout`` seconds."""
    url = _engine(engine).url
    try:
        requests.head(url, timeout=timeout)
    except requests.RequestException as err:
        raise CrawlError(
            f"cannot reach {engine} ({url}): crawling needs internet access; run it on Colab or a machine with "
            f"network, or put images in {Path(out_dir)}/<city>/ by hand"
        ) from err


def crawl_cities(
    cities,
    out_dir,
    *,
    per_city,
    engine="google",
    license=DEFAULT_LICENSE,
    filters=None,
    min_size=256,
    timeout=5.0,
    threads=4,
    parser_cls=None,
    downloader_cls=ManifestDownloader,
):
    """Download up to ``per_city`` street photos for each city into ``out_dir/<city>/``.

    Resumable: a city folder that already holds ``per_city`` files is skipped, and the others only get what is
    missing, never a URL already in the manifest.

    Eleven parameters, over the ~10 of the rest of the package: one per option of `streetlib data crawl`, and the two
    icrawler classes, which the tests replace by local stand-ins (no network).

    Args:
        cities: the cities file, see `load_cities`.
        out_dir: str or Path.
        per_city: int >= 1, the number of photos wanted per city (at most 1000, the engines' limit).
        engine: 'google' (default) or 'bing'.
        license: the licence filter, see `crawl_filters`; None for none.
        filters: more icrawler filters, see `crawl_filters`.
        min_size: int, the smallest accepted shorter side in pixels. Default 256.
        timeout: float, seconds to wait for any one request.
        threads: int, parallel downloads.
        parser_cls: optional icrawler `Parser` subclass replacing the engine's (icrawler's extension point).
        downloader_cls: icrawler downloader class; a subclass of `ManifestDownloader` to change how files are
            fetched.

    Returns:
        dict city -> {"before": int, "after": int}, the number of files in its folder before and after.

    Raises:
        ValueError: invalid arguments, cities file or filters (checked before any request).
        CrawlError: the engine cannot be reached.
    """
    _check_crawl_args(per_city, min_size)
    spec, keywords = load_cities(cities)
    search_filters = crawl_filters(engine=engine, license=license, filters=filters)
    out = Path(out_dir)
    check_online(engine, out_dir=out, timeout=timeout)
    with atomic_path(out / "classes.yaml") as tmp:
        spec.to_yaml(tmp)
    manifest = out / RAW_MANIFEST
    known_urls = {row["url"] for row in read_manifest(manifest)}
    components = {"downloader_cls": downloader_cls, **({"parser_cls": parser_cls} if parser_cls else {})}
    counts = {}
    for city in spec.classes:
        city_dir = out / city
        city_dir.mkdir(parents=True, exist_ok=True)
        before = _count_files(city_dir)
        if before < per_city:
            downloader_args = dict(
                manifest=manifest,
                city=city,
                keyword=keywords[city],
                engine=engine,
                filters=search_filters,
                known_urls=known_urls,
            )
            _crawl_city(
                city_dir,
                downloader_args,
                components=components,
                threads=threads,
                missing=per_city - before,
                per_city=per_city,
                min_size=min_size,
                timeout=timeout,
            )
        counts[city] = {"before": before, "after": _count_files(city_dir)}
    return counts


def _check_crawl_args(per_city, min_size):
    if not isinstance(per_city, int) or not 1 <= per_city <= 1000:
        raise ValueError(f"Invalid `per_city`: expected an int in [1, 1000]. Received: per_city={per_city!r}")
    if not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"Invalid `min_size`: expected a positive int (pixels). Received: min_size={min_size!r}")


def _crawl_city(city_dir, downloader_args, *, components, threads, missing, per_city, min_size, timeout):
    """Fetch up to ``missing`` more photos of one city into ``city_dir`` with one icrawler crawler.

    ``downloader_args`` are the `ManifestDownloader` arguments (its ``engine``, ``keyword`` and ``filters`` make the
    search); ``components`` the crawler's downloader and parser classes; ``min_size`` is in pixels, ``timeout`` in
    seconds.
    """
    crawler = _engine(downloader_args["engine"]).crawler(
        **components,
        downloader_threads=threads,
        storage={"backend": "FileSystem", "root_dir": str(city_dir)},
        log_level=logging.WARNING,
        extra_downloader_args=downloader_args,
    )
    # The base-class crawl lets the feeder ask for more results than are missing: some are known URLs,
    # some fail or are too small.
    Crawler.crawl(
        crawler,
        feeder_kwargs=dict(
            keyword=downloader_args["keyword"],
            offset=0,
            max_num=min(1000, 2 * per_city),
            filters=downloader_args["filters"],
        ),
        parser_kwargs=dict(queue_timeout=1, req_timeout=timeout),
        downloader_kwargs=dict(
            max_num=missing,
            min_size=(min_size, min_size),
            file_idx_offset="auto",
            queue_timeout=1,
            req_timeout=timeout,
        ),
    )


def _engine(engine):
    if engine not in ENGINES:
        raise ValueError(f"Invalid `engine`. Expected one of {sorted(ENGINES)}. Received: engine={engine!r}")
    return ENGINES[engine]


def _count_files(folder):
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
