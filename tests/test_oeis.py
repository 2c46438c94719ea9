"""The local OEIS index, on stripped and names files the tests write.

What a search should find is worked out here by hand or by a plain scan of
the test's own sequences, never by the index.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nextterm_mlx.cli import main
from nextterm_mlx.errors import UserError
from nextterm_mlx.oeis import ATTRIBUTION, build_index, index_path, open_index

BIG = 123456789012345678901234567890123456789012345678901234567890  # 60 digits


def stripped_line(id: int, terms: list[int]) -> str:
    return f"A{id:06d} ,{''.join(f'{t},' for t in terms)}\n"


def write_files(folder: Path, sequences: dict[int, list[int]], names: dict[int, str] | None = None,
                compress: bool = False, extra: str = "") -> Path:
    """stripped and names (gzipped when `compress`) in `folder`, as the OEIS writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    stripped = "# OEIS Sequence Data (http://oeis.org/stripped.gz)\n# Last Modified: March 1 2025\n" + extra
    stripped += "".join(stripped_line(id, terms) for id, terms in sequences.items())
    named = "# OEIS Sequence Names\n" + "".join(f"A{id:06d} {name}\n" for id, name in (names or {}).items())
    for name, text in (("stripped", stripped), ("names", named)):
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (folder / name).write_text(text)
    return folder


def build(folder: Path, cache: Path):
    stripped = next(folder / n for n in ("stripped.gz", "stripped") if (folder / n).exists())
    names = next((folder / n for n in ("names.gz", "names") if (folder / n).exists()), None)
    report = build_index(stripped, names, index_path(cache), str(folder))
    return report, open_index(cache)


def naive_search(sequences: dict[int, list[int]], query: list[int], limit: int) -> list[tuple[str, int, int | None]]:
    """(id, offset, next) of every sequence holding `query`, at its first place: starts first, then by A-number."""
    found = []
    for id, terms in sequences.items():
        for start in range(len(terms) - len(query) + 1):
            if terms[start:start + len(query)] == query:
                after = terms[start + len(query)] if start + len(query) < len(terms) else None
                found.append((start != 0, id, start, after))
                break
    return [(f"A{id:06d}", start, after) for _, id, start, after in sorted(found)][:limit]


def nextterm(*args):
    """The console script in a process of its own."""
    return subprocess.run(["nextterm-mlx", *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def cli(capsys, monkeypatch):
    """The command run in this process, for speed: (exit code, stdout, stderr)."""
    def run(*args, input=""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def random_corpus(seed: int) -> dict[int, list[int]]:
    """Sequences whose runs recur: small alphabets, copies under other A-numbers, signs and 60-digit terms."""
    rng = random.Random(seed)
    corpus: dict[int, list[int]] = {}
    ids = rng.sample(range(1, 400000), 300)
    for id in ids:
        kind = rng.random()
        length = rng.randint(1, 40)
        if kind < 0.4:
            terms = [rng.randint(0, 2) for _ in range(length)]
        elif kind < 0.7:
            terms = [rng.randint(-30, 30) for _ in range(length)]
        elif kind < 0.8 and corpus:
            terms = list(rng.choice(list(corpus.values())))  # the same terms as another sequence
        else:
            terms = [rng.choice([BIG, -BIG, BIG + 1, 7]) * rng.randint(1, 3) for _ in range(length)]
        corpus[id] = terms
    return dict(sorted(corpus.items()))


def test_searches_agree_with_a_plain_scan(tmp_path):
    corpus = random_corpus(seed=3)
    _, index = build(write_files(tmp_path / "files", corpus, compress=True), tmp_path / "cache")
    rng = random.Random(4)
    queries = []
    for terms in rng.choices(list(corpus.values()), k=300):
        start = rng.randrange(len(terms))
        queries.append(terms[start:start + rng.randint(1, 9)])
    queries += [[rng.randint(-3, 3) for _ in range(rng.randint(1, 6))] for _ in range(100)]
    checked = 0
    for query in queries:
        for limit in (3, 1000):
            got = [(m.id, m.offset, m.next) for m in index.search(query, limit)]
            assert got == naive_search(corpus, query, limit), query
            checked += len(got)
        assert index.contains(query) == bool(naive_search(corpus, query, 1))
    assert checked > 1000  # the queries do find sequences, interior ones and ends among them


def test_hand_made_file_comments_signs_huge_terms_and_names(tmp_path):
    sequences = {45: [0, 1, 1, 2, 3, 5, 8, 13], 27: [1, 2, 3, 4, 5], 7: [-BIG, BIG, -1, 0, 2], 8: [1, 2, 3]}
    folder = write_files(tmp_path / "files", sequences, {45: "Fibonacci numbers.", 27: "The positive integers."})
    report, index = build(folder, tmp_path / "cache")
    assert (report.sequences, report.problems) == (4, {})
    assert [m.to_dict() for m in index.search([1, 2, 3])] == [
        {"id": "A000008", "name": None, "offset": 0, "next": None},
        {"id": "A000027", "name": "The positive integers.", "offset": 0, "next": 4},
        {"id": "A000045", "name": "Fibonacci numbers.", "offset": 2, "next": 5},
    ]
    assert [(m.id, m.offset, m.next) for m in index.search([BIG, -1])] == [("A000007", 1, 0)]
    assert [(m.id, m.offset, m.next) for m in index.search([-BIG])] == [("A000007", 0, BIG)]
    assert index.search([BIG + 1]) == []
    assert [m.id for m in index.search([1, 2, 3], limit=2)] == ["A000008", "A000027"]
    assert index.info()["sequences"] == 4 and index.info()["data_date"] == "March 1 2025"


def test_malformed_and_repeated_lines_are_reported_and_skipped(tmp_path):
    extra = ("A000001 ,1,x,3,\nA000002 ,1,,3,\nnot a line\nA000003 ,007,-0,\n\n"
             "A000004 ,4,5,\nA000004 ,6,7,\n")
    folder = write_files(tmp_path / "files", {5: [9, 9]}, {4: "Four.", 5: "Five."}, extra=extra)
    with (folder / "names").open("a") as f:
        f.write("A000005 Five again.\nno name here\n")
    report, index = build(folder, tmp_path / "cache")
    assert report.sequences == 3
    assert report.problems == {
        str(folder / "stripped"): ["line 3: 'x' is not an integer", "line 4: a term is missing between two commas",
                                   "line 5: expected an OEIS stripped line such as 'A000045 ,0,1,1,2,'",
                                   "line 9: A000004 appeared before"],
        str(folder / "names"): ["line 4: A000005 appeared before",
                                "line 5: expected an A-number and a name, such as 'A000045 Fibonacci numbers'"],
    }
    assert [(m.id, m.name, m.next) for m in index.search([4])] == [("A000004", "Four.", 5)]
    assert [(m.id, m.offset) for m in index.search([7, 0])] == [("A000003", 0)]  # spelled the OEIS's way
    assert index.search([6, 7]) == []


def test_a_truncated_gzip_fails_in_one_line_and_keeps_the_old_index(tmp_path):
    cache = tmp_path / "cache"
    build(write_files(tmp_path / "old", {45: [0, 1, 1, 2, 3, 5]}, compress=True), cache)
    before = hashlib.sha256(index_path(cache).read_bytes()).hexdigest()
    new = write_files(tmp_path / "new", {n: [n, n + 1, n + 2] for n in range(1, 3000)}, compress=True)
    data = (new / "stripped.gz").read_bytes()
    (new / "stripped.gz").write_bytes(data[: len(data) // 2])

    done = nextterm("oeis", "download", "--from", new, "--cache-dir", cache)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "truncated or damaged" in done.stderr, done.stderr
    assert "the previous index is unchanged" in done.stderr
    assert hashlib.sha256(index_path(cache).read_bytes()).hexdigest() == before
    assert sorted(p.name for p in index_path(cache).parent.iterdir()) == ["index.sqlite"]
    with pytest.raises(UserError, match="no index was built"):
        build(new, tmp_path / "empty-cache")
    assert not index_path(tmp_path / "empty-cache").exists()


def test_transforms_say_which_one_matched_and_the_next_term_it_implies(tmp_path):
    sequences = {27: [1, 2, 3, 4, 5, 6, 7], 45: [0, 1, 1, 2, 3, 5, 8, 13], 217: [0, 1, 3, 6, 10, 15, 21],
                 290: [0, 1, 4, 9, 16, 25]}
    _, index = build(write_files(tmp_path / "files", sequences), tmp_path / "cache")

    def found(terms):
        return [(m.id, m.transform and m.transform.name, m.offset, m.next, m.query_next)
                for m in index.search(terms, 10, transforms=True)]

    assert found([10, 20, 30]) == [("A000027", "gcd", 0, 4, 40), ("A000045", "gcd", 2, 5, 50)]
    # minus its first term less 1: 1, 2, 3
    assert found([12, 13, 14]) == [("A000027", "shift", 0, 4, 15), ("A000045", "shift", 2, 5, 16)]
    # the query itself; its transforms find no other sequence
    assert found([2, 3, 4, 5]) == [("A000027", None, 1, 6, 6)]
    # minus 1: 0, 1, 3, 6, 10; first differences: 1, 2, 3, 4
    assert found([1, 2, 4, 7, 11]) == [("A000217", "shift", 0, 15, 16), ("A000027", "differences", 0, 5, 16)]
    # partial sums 1, 3, 6, 10, 15, 21 end A000217: no next term
    assert found([1, 2, 3, 4, 5, 6]) == [("A000027", None, 0, 7, 7), ("A000217", "partial_sums", 1, None, None)]
    record = index.search([10, 20, 30], 1, transforms=True)[0].to_dict()
    assert record["transform"] == {"name": "gcd", "description": "divided by 10", "terms": [1, 2, 3],
                                   "query_next": 40}


@pytest.fixture
def small_index(tmp_path, cli):
    folder = write_files(tmp_path / "files", {45: [0, 1, 1, 2, 3, 5, 8, 13], 27: [1, 2, 3, 4, 5, 6]},
                         {45: "Fibonacci numbers.", 27: "The positive integers."})
    assert cli("oeis", "download", "--from", folder).returncode == 0
    return folder


def test_search_prints_matches_and_the_licence(small_index, cli):
    done = cli("oeis", "search", "1", "2", "3")
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["A000027  offset 0  next 4  The positive integers.",
                                        "A000045  offset 2  next 5  Fibonacci numbers."]
    assert done.stderr.splitlines() == [ATTRIBUTION]
    done = cli("oeis", "search", "--limit", "1", "-1,", "7")
    assert (done.returncode, done.stdout) == (0, "no match in the local OEIS\n")
    done = cli("oeis", "search", "--transforms", "2", "4", "6")
    assert done.stdout.splitlines()[0] == "A000027  offset 0  next 4  [divided by 2: yours next 8]  The positive integers."


def test_each_stdin_line_is_a_query_and_json_is_one_object_each(small_index, cli):
    done = cli("oeis", "search", "--json", "--limit", "1", input="5 8 13\n\n1, 2\n")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"terms": [5, 8, 13], "matches": [{"id": "A000045", "name": "Fibonacci numbers.", "offset": 5, "next": None}],
         "license": ATTRIBUTION},
        {"terms": [1, 2], "matches": [{"id": "A000027", "name": "The positive integers.", "offset": 0, "next": 3}],
         "license": ATTRIBUTION},
    ]
    plain = cli("oeis", "search", input="5 8 13\n3 4\n")
    assert plain.stdout.splitlines() == ["query: 5 8 13", "A000045  offset 5  next (end)  Fibonacci numbers.",
                                         "query: 3 4", "A000027  offset 2  next 5  The positive integers."]


def test_info_describes_the_index(small_index, cli):
    details = json.loads(cli("oeis", "info", "--json").stdout)
    assert details["sequences"] == 2 and details["source"] == str(small_index.resolve())
    assert details["size_bytes"] == index_path().stat().st_size and details["license"] == ATTRIBUTION
    lines = cli("oeis", "info").stdout.splitlines()
    assert "sequences  2" in lines and "data_date  March 1 2025" in lines


@pytest.mark.parametrize("args, input, says", [
    (["oeis", "search", "1", "2"], "", "there is no OEIS index in "),
    (["oeis", "info"], "", "there is no OEIS index in "),
    (["eval", "seqs.txt", "--model", "tiny", "--exclude-known"], "", "there is no OEIS index in "),
    (["oeis", "download", "--from", "."], "", "no stripped.gz or stripped file in ."),
    (["oeis", "search"], "\n\n", "stdin held no terms"),
])
def test_mistakes_end_in_one_line_and_exit_code_2(tmp_path, cli, monkeypatch, args, input, says):
    (tmp_path / "seqs.txt").write_text("1 2 3\n")
    monkeypatch.chdir(tmp_path)
    done = cli(*args, input=input)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert not index_path().exists()


def test_a_bad_term_in_a_query_is_refused(small_index, cli):
    done = cli("oeis", "search", "1", "two")
    assert done.returncode == 2 and done.stderr == (
        "nextterm-mlx: error: 'two' is not an integer; give whole numbers such as 1 2 3 or -4\n")


@pytest.fixture
def oeis_server(tmp_path, monkeypatch):
    """A local stand-in for oeis.org serving a folder; it stops with the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("NEXTTERM_MLX_OEIS_URL", url)
    yield folder, url
    server.shutdown()
    server.server_close()


def test_download_fetches_both_files_then_builds(oeis_server, cli):
    folder, url = oeis_server
    write_files(folder, {45: [0, 1, 1, 2, 3, 5, 8]}, {45: "Fibonacci numbers."}, compress=True)
    done = cli("oeis", "download")
    assert done.returncode == 0, done.stderr
    assert "CC BY-SA 4.0" in done.stderr.splitlines()[0] and "indexed 1 sequences" in done.stderr
    assert sorted(p.name for p in index_path().parent.iterdir()) == ["index.sqlite", "names.gz", "stripped.gz"]
    assert (index_path().parent / "names.gz").read_bytes() == (folder / "names.gz").read_bytes()
    assert json.loads(cli("oeis", "info", "--json").stdout)["source"] == url
    match = json.loads(cli("oeis", "search", "--json", "2", "3", "5").stdout)["matches"]
    assert match == [{"id": "A000045", "name": "Fibonacci numbers.", "offset": 3, "next": 8}]


def test_a_download_that_fails_keeps_the_index_and_says_why(oeis_server, small_index, cli):
    folder, url = oeis_server
    before = index_path().read_bytes()
    (folder / "stripped.gz").write_bytes(b"")  # names.gz is missing: the server answers 404
    done = cli("oeis", "download")
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == (
        f"nextterm-mlx: error: could not fetch {url}/names.gz: the server answered 404 File not found; "
        "try again later (the index you have is unchanged)")
    assert index_path().read_bytes() == before
    assert sorted(p.name for p in index_path().parent.iterdir()) == ["index.sqlite"]


def test_offline_with_nothing_cached_is_one_line_and_exit_code_2(cli, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("NEXTTERM_MLX_OEIS_URL", closed)
    done = cli("oeis", "download")
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith(
        f"nextterm-mlx: error: could not fetch {closed}/stripped.gz: ")
    assert done.stderr.splitlines()[-1].endswith("(no index was built)")
    assert not index_path().exists()


def test_eval_exclude_known_drops_the_sequences_the_oeis_holds(tmp_path, small_index):
    corpus = {45: [0, 1, 1, 2, 3, 5, 8, 13], 27: [1, 2, 3, 4, 5, 6]}
    rows = [[0, 1, 1, 2, 9], [3, 4, 5, 6, 7], [5, 8, 13, 21], [2, 4, 6, 8], [1, 2, 3, 4], [7, 7, 7]]
    (tmp_path / "seqs.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    known = sum(bool(naive_search(corpus, r[:-1], 1)) for r in rows)
    assert 0 < known < len(rows)
    done = nextterm("eval", tmp_path / "seqs.txt", "--model", "tiny", "--exclude-known", "--json")
    summary = json.loads(done.stdout)
    assert summary["skipped"]["known_in_oeis"] == known and summary["sequences"] == len(rows) - known
    plain = nextterm("eval", tmp_path / "seqs.txt", "--model", "tiny", "--exclude-known").stdout
    assert f"skipped: {known} known in oeis" in plain
