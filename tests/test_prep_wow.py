"""prepare-wow: the KI release and the mini release on the real data, and error/skip handling
on small hand-made files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from informative_dialogue.errors import CorpusError
from data_prep.corpora.wow import main



def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def stats_of(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())


# ------------------------------------------------------------------------------------- real


def test_real_ki(shared_data: Path, tmp_path: Path) -> None:
    ki = shared_data / "wow_ki"
    main(["--format", "ki", "--input", str(ki), "--output", str(tmp_path)])
    stats = stats_of(tmp_path)
    assert stats["missing"] == ["train"]
    expected = {"valid": 6895, "test_seen": 3391, "test_unseen": 3412}
    assert {s: v["examples"] for s, v in stats["splits"].items()} == expected
    assert all(v["skipped"] == {} and v["align"] for v in stats["splits"].values())
    for split, n in expected.items():
        src, tgt, align = (lines(tmp_path / f"{split}.{e}") for e in ("src", "tgt", "align"))
        assert len(src) == len(tgt) == len(align) == n
        assert all(len(s.split()) == len(a.split()) for s, a in zip(src, align))
    assert not (tmp_path / "valid.knowledge").exists()
    src = lines(tmp_path / "valid.src")
    assert src[0].startswith(", it is very relaxing . that sounds great . i ' ve always thought")
    assert src[0].endswith("what do you mostly plant ?")
    assert lines(tmp_path / "valid.tgt")[0].startswith("i have planted several fruits trees , tomatoes , ja ##le ##pen ##os")
    assert lines(tmp_path / "valid.align")[0].startswith("0 0 0 0 5388241 0 0 3783008 820440")
    # copied as is (only CRLF -> LF)
    raw = (ki / "test.seen.src").read_bytes().decode("utf-8").replace("\r\n", "\n")
    assert (tmp_path / "test_seen.src").read_text(encoding="utf-8") == raw


def test_real_mini(shared_data: Path, tmp_path: Path) -> None:
    mini = shared_data / "wow_mini"
    main(["--format", "mini", "--input", str(mini), "--output", str(tmp_path)])
    stats = stats_of(tmp_path)
    assert stats["missing"] == []
    got = {s: (v["examples"], v["no_knowledge"], v["skipped"]) for s, v in stats["splits"].items()}
    assert got == {"train": (100, 10, {}), "valid": (100, 8, {}), "test": (100, 12, {})}
    src, tgt, know = (lines(tmp_path / f"train.{e}") for e in ("src", "tgt", "knowledge"))
    assert len(src) == len(tgt) == len(know) == 100
    assert src[0].startswith("science fiction ( often shortened to sf or sci fi ) is a genre of speculative fiction")
    assert tgt[0].startswith("i think science fiction is an amazing genre for anything .")
    assert know[0] == ""  # idx 0 is no_fact
    assert src[1] == "i 'm a huge fan of science fiction myself !"
    assert know[1].startswith(
        "science fiction films have often been used to focus on political or social issues , and to explore "
        "philosophical issues like the human condition __knowledge__ television science fiction is a popular genre"
    )
    assert sum(1 for k in know if not k) == 10


# -------------------------------------------------------------------------------- hand-made


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_ki_misaligned_voken(tmp_path: Path) -> None:
    write(tmp_path / "valid.src", "a b c\nd e f g\n")
    write(tmp_path / "valid.tgt", "x\ny\n")
    write(tmp_path / "valid.voken.src", "0 1 0\n0 2 0\n")
    with pytest.raises(CorpusError) as info:
        main(["--format", "ki", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    msg = str(info.value)
    assert "valid.voken.src:2:" in msg and "3 knowledge ids" in msg and "has 4 tokens" in msg
    assert info.value.line == 2


def test_ki_bad_id_and_line_counts(tmp_path: Path) -> None:
    write(tmp_path / "valid.src", "a b\n")
    write(tmp_path / "valid.tgt", "x\n")
    write(tmp_path / "valid.voken.src", "0 x7\n")
    with pytest.raises(CorpusError, match=r"valid\.voken\.src:1: expected non-negative integer knowledge ids, got 'x7'"):
        main(["--format", "ki", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    write(tmp_path / "valid.tgt", "x\ny\n")
    with pytest.raises(CorpusError, match=r"valid\.tgt: 2 lines but .*valid\.src has 1"):
        main(["--format", "ki", "--input", str(tmp_path), "--output", str(tmp_path / "out")])


def test_ki_skips_and_missing_files(tmp_path: Path) -> None:
    write(tmp_path / "valid.src", "a b\n\nc\n")
    write(tmp_path / "valid.tgt", "x\ny\nz\n")
    write(tmp_path / "valid.voken.src", "0 5\n\n9\n")
    write(tmp_path / "test.seen.src", "p q\n")  # no .voken.src: written without .align
    write(tmp_path / "test.seen.tgt", "r\n")
    write(tmp_path / "test.unseen.src", "only src\n")  # no .tgt: split skipped
    out = tmp_path / "out"
    main(["--format", "ki", "--input", str(tmp_path), "--output", str(out)])
    assert lines(out / "valid.src") == ["a b", "c"]
    assert lines(out / "valid.tgt") == ["x", "z"]
    assert lines(out / "valid.align") == ["0 5", "9"]
    assert lines(out / "test_seen.src") == ["p q"] and not (out / "test_seen.align").exists()
    assert not (out / "test_unseen.src").exists()
    stats = stats_of(out)
    assert stats["missing"] == ["train", "test.unseen"]
    assert stats["splits"]["valid"]["skipped"] == {"empty_src": 1}
    assert stats["splits"]["valid"]["examples"] == 2
    assert stats["splits"]["test_seen"]["align"] is False


def test_ki_rejects_mini_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--format", "ki", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--lowercase"])


def test_mini_join_and_skips(tmp_path: Path) -> None:
    write(tmp_path / "train.pro_qa.txt", "0\tHello there\tHi !\n1\tpost\t \n2\ttell me\tsure .\n")
    write(tmp_path / "train.sent_fact.txt", "2\tfact one\t\tfact two\n0\tno_fact\n1\tunused\n")
    out = tmp_path / "out"
    main(["--format", "mini", "--input", str(tmp_path), "--output", str(out), "--lowercase"])
    assert lines(out / "train.src") == ["hello there", "tell me"]
    assert lines(out / "train.tgt") == ["hi !", "sure ."]
    assert lines(out / "train.knowledge") == ["", "fact one __knowledge__ fact two"]
    stats = stats_of(out)
    assert stats["missing"] == ["valid", "test"]
    s = stats["splits"]["train"]
    assert s["skipped"] == {"empty_response": 1}
    assert (s["no_knowledge"], s["empty_knowledge_fields_dropped"], s["examples"]) == (1, 1, 2)

    out2 = tmp_path / "out2"
    main(["--format", "mini", "--input", str(tmp_path), "--output", str(out2), "--knowledge-separator", "<k>"])
    assert lines(out2 / "train.knowledge")[1] == "fact one <k> fact two"


def test_mini_missing_idx(tmp_path: Path) -> None:
    write(tmp_path / "valid.pro_qa.txt", "0\ta\tb\n1\tc\td\n")
    write(tmp_path / "valid.sent_fact.txt", "0\tno_fact\n")
    with pytest.raises(CorpusError) as info:
        main(["--format", "mini", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    msg = str(info.value)
    assert "valid.sent_fact.txt" in msg and "idx 1" in msg and "valid.pro_qa.txt has on line 2" in msg

    write(tmp_path / "valid.sent_fact.txt", "0\tno_fact\n1\tf\n5\tg\n")
    with pytest.raises(CorpusError, match=r"valid\.pro_qa\.txt: no line with idx 5 .*sent_fact\.txt has on line 3"):
        main(["--format", "mini", "--input", str(tmp_path), "--output", str(tmp_path / "out")])


def test_mini_malformed_line(tmp_path: Path) -> None:
    write(tmp_path / "test.pro_qa.txt", "0\ta\tb\n1\tjust a post\n")
    write(tmp_path / "test.sent_fact.txt", "0\tno_fact\n1\tno_fact\n")
    with pytest.raises(CorpusError, match=r"test\.pro_qa\.txt:2: expected 3 tab-separated fields .*got 2"):
        main(["--format", "mini", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    write(tmp_path / "test.pro_qa.txt", "zero\ta\tb\n")
    with pytest.raises(CorpusError, match=r"test\.pro_qa\.txt:1: expected an integer idx"):
        main(["--format", "mini", "--input", str(tmp_path), "--output", str(tmp_path / "out")])
