"""The paragraph-retrieval benchmarks' sources: collaborative-experts split lists, DiDeMo, QuerYD and
Condensed Movies, on small annotation files written here in each release's public format (the real
files are not available offline), bad rows included; every annotation is accepted or one reject
with a reason, and ``lfvila build --stage manifest`` runs on each with its recipe."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lfvila.build_config import BuildConfig
from lfvila.cli import main
from lfvila.manifest.build import build_manifest
from lfvila.manifest.config import ManifestConfig
from lfvila.manifest.records import RawVideo, Reject
from lfvila.manifest.sources import get_adapter
from lfvila.manifest.sources.didemo import consensus


def _read(fmt: str, path: Path, options: dict | None = None) -> tuple[list[RawVideo], list[Reject], dict]:
    stats: dict = {}
    items = list(get_adapter(fmt).read(path, options or {}, None, stats))
    return [i for i in items if isinstance(i, RawVideo)], [i for i in items if isinstance(i, Reject)], stats


def _retrieval_manifest(**overrides) -> ManifestConfig:
    """What the retrieval recipes set: one long-form video per annotated video."""
    return ManifestConfig(min_clips=1, max_gap_s=None, max_overlap_s=None, val_fraction=0.0, **overrides)


def _build(tmp_path: Path, sources: list[str], **overrides) -> tuple[list[dict], list[dict], dict, list[dict]]:
    out = tmp_path / "out"
    build_manifest(BuildConfig(manifest=_retrieval_manifest(**overrides)), out, sources)
    table = lambda name: pq.read_table(out / name).to_pylist()  # noqa: E731
    return (table("clips.parquet"), table("rejects.parquet"), json.loads((out / "corpus.json").read_text())["counts"],
            table("longform.parquet"))


def _accounted(counts: dict, n_annotations: int) -> None:
    """Every annotation is one input record, accepted or rejected; every kept clip in a long-form video."""
    assert counts["input_records"] == n_annotations == counts["accepted_records"] + counts["rejected"]
    assert counts["kept_clips"] == counts["clips_in_longform"] and counts["merge_rejected"] == 0
    assert all(counts["invariants"].values())


def _cli_manifest(tmp_path: Path, source: str, recipe: str, *extra: str) -> dict:
    out = tmp_path / "cli"
    assert main(["build", "--out", str(out), "--source", source, "--config", f"pipelines/{recipe}.yaml",
                 "--stage", "manifest", *extra]) == 0
    return json.loads((out / "corpus.json").read_text())


# --- collaborative-experts split lists (ActivityNet) ----------------------------------------------

def test_activitynet_split_list_keeps_the_listed_videos_and_rejects_the_others(tmp_path, shared_data):
    val_1 = shared_data / "annotations/activitynet_captions/val_1.json"
    real = json.loads(val_1.read_text())
    listed = list(real)[:3]
    split_list = tmp_path / "val_1_list.txt"
    split_list.write_text("\n".join(listed + ["v_notInTheFile"]) + "\n\n")
    videos, rejects, stats = _read("activitynet", val_1, {"split_list": str(split_list)})
    assert [v.video_id for v in videos] == listed
    others = sum(len(e["sentences"]) for vid, e in real.items() if vid not in listed)
    assert len(rejects) == others and {r.reason for r in rejects} == {"not_in_split"}
    assert stats == {"split_list_ids": 4, "split_list_unmatched": 1}

    clips, rejected, counts, longform = _build(tmp_path, [f"activitynet:{val_1}?split_list={split_list}"],
                                               force_split="val", duration_tolerance_s=0.01)
    _accounted(counts, sum(len(e["sentences"]) for e in real.values()))
    assert counts["rejects_by_reason"] == {"not_in_split": others}
    assert sorted(r["video_id"] for r in longform) == sorted(listed) and {r["split"] for r in longform} == {"val"}
    source = counts["sources"][f"activitynet:{val_1}?split_list={split_list}"]
    assert source["split_list_unmatched"] == 1


def test_split_list_is_an_input_of_the_corpus(tmp_path, shared_data):
    """The list is hashed with the annotations: another list is another corpus, not a silent rebuild."""
    val_1 = shared_data / "annotations/activitynet_captions/val_1.json"
    split_list = tmp_path / "list.txt"
    split_list.write_text(next(iter(json.loads(val_1.read_text()))) + "\n")
    corpus = _cli_manifest(tmp_path, f"activitynet:{val_1}?split_list={split_list}", "retrieval_activitynet")
    assert [f["path"] for f in corpus["inputs"][0]["files"]] == ["val_1.json", "list.txt"]
    assert corpus["counts"]["longform"]["train"]["videos"] == 1


# --- DiDeMo ---------------------------------------------------------------------------------------

def test_didemo_consensus_is_the_most_frequent_pair_ties_to_the_earliest():
    assert consensus([(2, 3), (2, 3), (1, 3), (4, 4)]) == (2, 3)
    assert consensus([(1, 1), (0, 0), (1, 1), (0, 0)]) == (0, 0)  # tie: earliest start
    assert consensus([(0, 2), (0, 1)]) == (0, 1)  # tie: earliest end
    assert consensus([(3, 3)]) == (3, 3)


def _didemo_file(tmp_path: Path) -> Path:
    """LocalizingMoments' format: a JSON list; videos named as in the release (``<user>@N<nn>_<id>.<ext>``)."""
    def ann(ann_id, video, description, times, **extra):
        return {"annotation_id": ann_id, "video": video, "description": description, "times": times,
                "download_link": f"https://www.flickr.com/video_download.gne?id={ann_id}", **extra}

    entries = [
        ann(1, "10015567@N08_3655084291.mov", "the dog runs back", [[2, 3], [2, 3], [1, 3], [2, 2]], num_segments=6),
        ann(2, "10015567@N08_3655084291.mov", "a dog jumps in the water", [[0, 0], [1, 1], [0, 0], [1, 1]]),
        ann(3, "11223344@N00_4455667788.avi", "a man waves", [[5, 5], [5, 5], [4, 5], [5, 5]]),
        ann(4, "11223344@N00_4455667788.avi", "", [[0, 1], [0, 1], [0, 1], [0, 1]]),  # empty description
        ann(5, "11223344@N00_4455667788.avi", "camera pans left", [[5, 5], [5, 5], [5, 5], [5, 5]], num_segments=5),
        ann(6, "11223344@N00_4455667788.avi", "bad times", [[1, "2"], [1, 2]]),
        ann(7, "11223344@N00_4455667788.avi", "end before start", [[3, 1], [3, 1], [0, 0]]),
        ann(8, "11223344@N00_4455667788.avi", "negative", [[-1, 0], [-1, 0]]),
        {"annotation_id": 9, "description": "no video", "times": [[0, 0]]},
        ann(10, "99887766@N01_1122334455.mp4", "the only clip of its video", [[0, 5]] * 4),
        "not an object",
    ]
    path = tmp_path / "val_data.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def test_didemo_paragraph_in_consensus_order_and_bad_rows_rejected(tmp_path):
    path = _didemo_file(tmp_path)
    videos, rejects, _ = _read("didemo", path)
    by_id = {v.video_id: v for v in videos}
    dog = by_id["10015567@N08_3655084291.mov"]
    assert [(c.clip_id, c.start, c.end) for c in dog.clips] == [
        ("10015567@N08_3655084291.mov.1", 10.0, 20.0), ("10015567@N08_3655084291.mov.2", 0.0, 5.0)]
    assert {(r.clip_id, r.reason) for r in rejects} == {
        ("11223344@N00_4455667788.avi.5", "beyond_duration"),  # segment 5 of a 5-segment video
        ("11223344@N00_4455667788.avi.6", "malformed_record"),
        ("11223344@N00_4455667788.avi.7", "end_not_after_start"),
        ("11223344@N00_4455667788.avi.8", "negative_time"),
        (None, "malformed_record"),  # no video; not an object
    } and len(rejects) == 6
    assert all(r.detail.startswith("line ") and r.line > 1 for r in rejects)

    clips, rejected, counts, longform = _build(tmp_path, [f"didemo:{path}"])
    _accounted(counts, 11)
    assert counts["rejects_by_reason"] == {"malformed_record": 3, "beyond_duration": 1, "end_not_after_start": 1,
                                           "negative_time": 1, "empty_text": 1}
    paragraphs = {r["video_id"]: [s["text"] for s in r["sentences"]] for r in longform}
    # In time order of the consensus segments, not file order.
    assert paragraphs == {"10015567@N08_3655084291.mov": ["a dog jumps in the water", "the dog runs back"],
                          "11223344@N00_4455667788.avi": ["a man waves"],
                          "99887766@N01_1122334455.mp4": ["the only clip of its video"]}
    assert [(r["start"], r["end"]) for r in longform if r["video_id"].startswith("1122")] == [(25.0, 30.0)]


def test_didemo_split_list_compares_ids_without_suffix(tmp_path):
    path = _didemo_file(tmp_path)
    split_list = tmp_path / "val_list.txt"
    split_list.write_text("10015567@N08_3655084291.mp4\n99887766@N01_1122334455\n")
    videos, rejects, stats = _read("didemo", path, {"split_list": str(split_list)})
    assert sorted(v.video_id for v in videos) == ["10015567@N08_3655084291.mov", "99887766@N01_1122334455.mp4"]
    # the unlisted video's two parsed annotations (3 and 4); its bad rows stay parse rejects
    assert sum(r.reason == "not_in_split" for r in rejects) == 2 and stats["split_list_unmatched"] == 0


def test_didemo_broken_json_is_one_reject_and_the_cli_builds_it(tmp_path):
    path = tmp_path / "train_data.json"
    good = {"annotation_id": 1, "video": "a@N1_2.mov", "description": "a cat", "times": [[0, 1], [0, 1]]}
    path.write_text("[\n" + json.dumps(good) + ",\n" + '{"annotation_id": 2, "video": ')
    videos, rejects, _ = _read("didemo", path)
    assert len(videos) == 1 and [(r.reason, r.line) for r in rejects] == [("malformed_record", 3)]
    assert "the rest of the file was not read" in rejects[0].detail

    corpus = _cli_manifest(tmp_path, f"didemo:{path}", "retrieval_didemo", "--set", "manifest.force_split=val")
    assert corpus["counts"]["longform"]["val"] == {"videos": 1, "clips": 1, "hours": round(10 / 3600, 6)}
    assert corpus["counts"]["input_records"] == 2 and corpus["counts"]["rejected"] == 1


def test_didemo_file_that_is_not_a_list_is_an_input_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"v": {}}')
    from lfvila.errors import InputError

    with pytest.raises(InputError, match="not a JSON list"):
        _read("didemo", path)


# --- QuerYD ---------------------------------------------------------------------------------------

def _queryd_files(tmp_path: Path, suffix: str = "") -> Path:
    """``raw_captions_combined_filtered.pkl`` and ``times_captions_combined_filtered.pkl`` as published:
    captions as word lists, spans in seconds (numpy floats, as numpy-built annotation files hold)."""
    import pickle

    import numpy as np

    f = np.float64
    captions = {
        "video-aaaaaaaaaaa": [["a", "man", "walks", "in."], ["he", "sits", "down."], ["the", "door", "closes."]],
        "video-bbbbbbbbbbb": [["a", "woman", "reads."], [], ["she", "smiles."], ["a", "dog", "barks."],
                              ["she", "leaves."]],
        "video-ccccccccccc": [["mismatch", "one"], ["mismatch", "two"]],
        "video-ddddddddddd": [["no", "times", "at", "all"]],
    }
    times = {
        "video-aaaaaaaaaaa": [[f(12.5), f(20.0)], [f(1.0), f(6.25)], [30.0, 31.5]],
        "video-bbbbbbbbbbb": [[0.0, 3.0], [4.0, 5.0], [7.5, 7.5], [-2.0, 1.0], [9.0, 8.0]],
        "video-ccccccccccc": [[0.0, 1.0]],
        "video-eeeeeeeeeee": [[0.0, 1.0]],  # times without captions: counted, nothing to reject
    }
    path = tmp_path / f"raw_captions_combined_filtered{suffix}.pkl"
    path.write_bytes(pickle.dumps(captions))
    (tmp_path / f"times_captions_combined_filtered{suffix}.pkl").write_bytes(pickle.dumps(times))
    return path


def test_queryd_pairs_captions_with_times_and_rejects_bad_rows(tmp_path):
    path = _queryd_files(tmp_path, "-v2")
    videos, rejects, stats = _read("queryd", path)
    a = next(v for v in videos if v.video_id == "video-aaaaaaaaaaa")
    assert [(c.clip_id, c.start, c.end, c.text) for c in a.clips][:2] == [
        ("video-aaaaaaaaaaa.0", 12.5, 20.0, "a man walks in."), ("video-aaaaaaaaaaa.1", 1.0, 6.25, "he sits down.")]
    assert type(a.clips[0].start) is float
    assert sorted((r.video_id, r.reason) for r in rejects) == [("video-ccccccccccc", "malformed_record")] * 2 + [
        ("video-ddddddddddd", "malformed_record")]
    assert "cannot be paired" in rejects[0].detail and stats["times_videos_without_captions"] == 1

    clips, rejected, counts, longform = _build(tmp_path, [f"queryd:{path}"])
    _accounted(counts, 11)
    assert counts["rejects_by_reason"] == {"malformed_record": 3, "empty_text": 1, "end_not_after_start": 2,
                                           "negative_time": 1}
    paragraphs = {r["video_id"]: [s["text"] for s in r["sentences"]] for r in longform}
    assert paragraphs == {"video-aaaaaaaaaaa": ["he sits down.", "a man walks in.", "the door closes."],
                          "video-bbbbbbbbbbb": ["a woman reads."]}


def test_queryd_split_list_json_variant_and_the_cli(tmp_path):
    (tmp_path / "raw_captions_combined_filtered.json").write_text(json.dumps(
        {"video-aaaaaaaaaaa": [["one"], ["two"]], "video-fffffffffff": [["three"]]}))
    times = tmp_path / "spans.json"
    times.write_text(json.dumps({"video-aaaaaaaaaaa": [[0, 2], [2, 4]], "video-fffffffffff": [[1, 2]]}))
    split_list = tmp_path / "test_list.txt"
    split_list.write_text("video-aaaaaaaaaaa\n")
    source = f"queryd:{tmp_path / 'raw_captions_combined_filtered.json'}?times={times}&split_list={split_list}"
    corpus = _cli_manifest(tmp_path, source, "retrieval_queryd", "--set", "manifest.force_split=val")
    counts = corpus["counts"]
    assert counts["input_records"] == 3 and counts["rejects_by_reason"] == {"not_in_split": 1}
    assert counts["longform"]["val"]["videos"] == 1 and counts["longform"]["val"]["clips"] == 2
    from lfvila.build_advice import manifest_advice

    (line,) = manifest_advice(counts, None, share=0.3)  # the unlisted video's caption: 1 of 3 records
    assert line.endswith("left out as not_in_split; to keep more: check the source's ?split_list= / ?split= "
                         "(expected when the annotation file holds the other splits too)")
    assert [f["path"] for f in corpus["inputs"][0]["files"]] == [
        "raw_captions_combined_filtered.json", "spans.json", "test_list.txt"]


def test_queryd_pickle_that_would_run_code_is_refused(tmp_path):
    import pickle

    from lfvila.errors import InputError

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "raw_captions_x.pkl"
    path.write_bytes(pickle.dumps({"video-a": Exploit()}))
    (tmp_path / "times_captions_x.pkl").write_bytes(pickle.dumps({}))
    with pytest.raises(InputError, match="refusing to build builtins.print"):
        _read("queryd", path)
    with pytest.raises(InputError, match=r"\?times=FILE"):
        get_adapter("queryd").input_files(tmp_path / "captions.pkl", {})


# --- Condensed Movies -----------------------------------------------------------------------------

CMD_CSV = (
    "videoid,imdbid,upload_year,caption,split\n"
    "Sv-BxH3SVS8,tt1707386,2019,\"Valjean, Javert and the students prepare for battle.\",train\n"
    "IsZdfna1LKA,tt1707386,2019,\"Javert, defeated, ends his life \"\"at the river\"\".\",val\n"
    "tdzX5AKWiDw,tt6398184,2019,   ,train\n"  # empty caption
    "noduration1,tt0000001,2019,A scene without a known length.,train\n"
    "zeroLength0,tt0000002,2019,A clip of length zero.,train\n"
    "broken,row\n"
    "\n"
    "Sv-BxH3SVS8,tt1707386,2019,\"A second,\nmulti-line description.\",train\n"
)
CMD_DURATIONS = "videoid,duration\nSv-BxH3SVS8,131\nIsZdfna1LKA,98\ntdzX5AKWiDw,77\nzeroLength0,0\n"


def test_condensed_movies_whole_clip_descriptions_split_and_rejects(tmp_path):
    csv_path, durations = tmp_path / "train_val_challf0.csv", tmp_path / "durations.csv"
    csv_path.write_text(CMD_CSV)
    durations.write_text(CMD_DURATIONS)
    options = {"split": "train", "durations": str(durations)}
    videos, rejects, _ = _read("condensed_movies", csv_path, options)
    first = next(v for v in videos if v.video_id == "Sv-BxH3SVS8")
    assert first.duration == "131" and [(c.clip_id, c.start, c.end, c.line) for c in first.clips] == [
        ("Sv-BxH3SVS8.0", 0.0, "131", 2), ("Sv-BxH3SVS8.1", 0.0, "131", 9)]
    assert first.clips[1].text == "A second,\nmulti-line description."
    assert sorted((r.clip_id or "", r.reason, r.line) for r in rejects) == [
        ("", "malformed_record", 7), ("IsZdfna1LKA.0", "not_in_split", 3), ("noduration1.0", "bad_timestamp", 5)]

    spec = f"condensed_movies:{csv_path}?split=train&durations={durations}"
    clips, rejected, counts, longform = _build(tmp_path, [spec])
    _accounted(counts, 7)
    assert counts["rejects_by_reason"] == {"not_in_split": 1, "bad_timestamp": 2, "malformed_record": 1,
                                           "empty_text": 1}
    assert [(r["video_id"], r["start"], r["end"], [s["text"] for s in r["sentences"]]) for r in longform] == [
        ("Sv-BxH3SVS8", 0.0, 131.0, ["Valjean, Javert and the students prepare for battle.",
                                     "A second, multi-line description."])]

    corpus = _cli_manifest(tmp_path, spec.replace("split=train", "split=val"), "retrieval_condensed_movies",
                           "--set", "manifest.force_split=val")
    assert corpus["counts"]["longform"]["val"]["videos"] == 1 and corpus["counts"]["input_records"] == 7
    assert [f["path"] for f in corpus["inputs"][0]["files"]] == ["train_val_challf0.csv", "durations.csv"]


def test_condensed_movies_duration_column_descriptions_csv_and_refusals(tmp_path):
    from lfvila.errors import InputError

    path = tmp_path / "descriptions.csv"
    path.write_text("videoid,description,duration\nabc,A man runs.,12.5\nabd,A woman waits.,oops\n")
    videos, rejects, _ = _read("condensed_movies", path)
    assert [(v.video_id, v.clips[0].end) for v in videos] == [("abc", "12.5"), ("abd", "oops")] and not rejects
    _, rejected, counts, _ = _build(tmp_path, [f"condensed_movies:{path}"])
    assert counts["rejects_by_reason"] == {"bad_timestamp": 1} and counts["kept_clips"] == 1

    no_duration = tmp_path / "test_challf0.csv"
    no_duration.write_text("videoid,caption,split\n1061,A caption.,test\n")
    with pytest.raises(InputError, match=r"\?durations="):
        _read("condensed_movies", no_duration)
    with pytest.raises(InputError, match="split column"):
        _read("condensed_movies", path, {"split": "train"})
    with pytest.raises(InputError, match="one of train, val, test"):
        _read("condensed_movies", no_duration, {"split": "dev"})
    (tmp_path / "other.csv").write_text("start,end,text\n0,1,hello\n")
    with pytest.raises(InputError, match="Condensed Movies CSV"):
        _read("condensed_movies", tmp_path / "other.csv")


# --- the fine-tuning recipes ------------------------------------------------------------------------

@pytest.mark.parametrize("name,n_train", [("didemo", 8392), ("queryd", 1796), ("condensed_movies", 20000)])
def test_train_recipes_are_activitynet_s_with_their_own_epochs_in_steps(name, n_train):
    """Each benchmark's recipe is the release's retrieval recipe (train/retrieval_activitynet.yaml) with
    20 epochs / 1 warm-up / decay every 5 counted in its own train set's steps (condensed_movies: an
    assumed size, said in the file)."""
    from dataclasses import asdict

    from lfvila.config import load_config
    from lfvila.trainer.config import TrainConfig

    recipes = Path(__file__).resolve().parents[1] / "train"
    cfg = asdict(load_config(TrainConfig, recipes / f"retrieval_{name}.yaml"))
    anet = asdict(load_config(TrainConfig, recipes / "retrieval_activitynet.yaml"))
    per_epoch = n_train // (16 * 8)
    stepped = {("schedule", "warmup_steps"): per_epoch, ("schedule", "decay_every_steps"): 5 * per_epoch,
               ("trainer", "max_steps"): 20 * per_epoch, ("trainer", "ckpt_every"): 5 * per_epoch,
               ("trainer", "eval_every"): per_epoch, ("trainer", "out_dir"): f"runs/retrieval_{name}"}
    for (section, key), value in stepped.items():
        assert cfg[section].pop(key) == value
        anet[section].pop(key)
    assert cfg == anet


def test_didemo_corpus_through_the_shard_stage_finds_downloaded_video_names(tmp_path, shared_data):
    """LocalizingMoments' downloader saves ``<video>.mp4`` (``x.mov.mp4``): the video stage finds it
    as ``<video_id>.<ext>`` and the sample holds the consensus spans (a real video stands in: the
    annotated ones are not offline)."""
    from lfvila.shards.read import iter_samples

    path = tmp_path / "test_data.json"
    video = "10015567@N08_3655084291.mov"
    path.write_text(json.dumps([
        {"annotation_id": 1, "video": video, "description": "the diver climbs up", "times": [[2, 2], [2, 2], [1, 2]]},
        {"annotation_id": 2, "video": video, "description": "the diver stands", "times": [[0, 0], [0, 1], [0, 0]]}]))
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / f"{video}.mp4").symlink_to(shared_data / "videos/natural/pd-extendedview__diver.mov")
    out = tmp_path / "didemo_test"
    assert main(["build", "--out", str(out), "--source", f"didemo:{path}", "--config", "pipelines/retrieval_didemo.yaml",
                 "--set", "manifest.force_split=val", "--set", "video.fps=1", "--videos", str(videos)]) == 0
    (tar,) = sorted((out / "shards").glob("val-*.tar"))
    (sample,) = list(iter_samples(tar))
    meta = sample["meta"]
    assert meta["video_id"] == video and [s["text"] for s in meta["sentences"]] == ["the diver stands",
                                                                                   "the diver climbs up"]
    # Consensus spans 0-5 s and 10-15 s, the second trimmed where the 14.04 s video's frames end (1 fps
    # grid); frames are stored inside the sentences' spans only, as for every source (none for 5-10 s).
    assert [(x["start"], x["end"]) for x in meta["sentences"]] == [(0.0, 5.0), (10.0, 14.0)]
    assert meta["frame_times"] == [0.5, 1.5, 2.5, 3.5, 4.5, 10.5, 11.5, 12.5, 13.5]
