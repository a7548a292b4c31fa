"""Which (video_id, url) each source format gives, the download config, and the options given to yt-dlp."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfvila.build_config import BuildConfig
from lfvila.config import load_config
from lfvila.download.config import DownloadConfig
from lfvila.download.fetch import PERMANENT, REASONS, RETRY_IN_RUN, choose_backend, parse_retry_after
from lfvila.download.run import in_shard_range, select_requests
from lfvila.download.sources import Unreadable, VideoRequest, read_requests
from lfvila.download.ytdlp import classify_error, format_selector, ytdlp_options

ANN = Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"
needs_data = pytest.mark.skipif(not ANN.is_dir(), reason="../shared/data/annotations not available")


@needs_data
def test_activitynet_ids_map_to_youtube_without_v_prefix():
    items = list(read_requests(f"activitynet:{ANN / 'activitynet_captions' / 'val_1.json'}"))
    videos = [i for i in items if isinstance(i, VideoRequest)]
    raw = json.loads((ANN / "activitynet_captions" / "val_1.json").read_text())
    assert [v.video_id for v in videos] == list(raw)  # the manifest's ids, in file order
    first = videos[0]
    assert first.video_id.startswith("v_")
    assert first.url == f"https://www.youtube.com/watch?v={first.video_id[2:]}"


@needs_data
def test_youcook2_and_howto100m_ids_are_youtube_ids():
    yc = [i for i in read_requests(f"youcook2:{ANN / 'youcook2' / 'youcookii_annotations_trainval.json'}")
          if isinstance(i, VideoRequest)]
    assert len(yc) == 1790 and all(v.url.endswith("?v=" + v.video_id) for v in yc)
    folder = ANN / "howto100m_asr_captions" / "small_train_captions"
    ht = [i for i in read_requests(f"howto100m:{folder}") if isinstance(i, VideoRequest)]
    assert sorted(v.video_id for v in ht) == sorted(p.stem for p in folder.glob("*.csv"))
    dash = [v for v in ht if v.video_id.startswith("-")]
    assert dash and dash[0].url == f"https://www.youtube.com/watch?v={dash[0].video_id}"


def test_hdvila_url_field_and_unreadable_lines(tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"video_id": "QMi8x8o55Ns", "url": "https://www.youtube.com/watch?v=QMi8x8o55Ns",
                                "clip": []}) + "\n{not json\n" + json.dumps({"video_id": "noUrl", "clip": []}) + "\n")
    items = list(read_requests(f"hdvila:{meta}?text=ignored.tsv"))
    assert items[0] == VideoRequest("QMi8x8o55Ns", "https://www.youtube.com/watch?v=QMi8x8o55Ns", "hdvila")
    assert isinstance(items[1], Unreadable) and items[1].line == 2
    assert items[2] == VideoRequest("noUrl", None, "hdvila")


def test_url_lists_csv_tsv_jsonl_and_template(tmp_path):
    (tmp_path / "a.csv").write_text("video_id,url\nv1,http://x/1.mp4\nbroken\n")
    (tmp_path / "b.tsv").write_text("v2\thttp://x/2.webm\n")
    (tmp_path / "c.jsonl").write_text('{"video_id": "v3", "url": "http://x/3"}\n{"video_id": 3}\n')
    items = [i for f in ("a.csv", "b.tsv", "c.jsonl") for i in read_requests(f"urls:{tmp_path / f}")]
    assert [(i.video_id, i.url) for i in items if isinstance(i, VideoRequest)] == [
        ("v1", "http://x/1.mp4"), ("v2", "http://x/2.webm"), ("v3", "http://x/3")]
    assert [(i.file.endswith("a.csv"), i.line) for i in items if isinstance(i, Unreadable)] == [(True, 3), (False, 2)]
    cfg = DownloadConfig(url_template="http://127.0.0.1:9/{video_id}.mp4")
    reqs, counts = select_requests(cfg, [f"urls:{tmp_path / 'a.csv'}", f"urls:{tmp_path / 'a.csv'}"])
    assert [r.url for r in reqs] == ["http://127.0.0.1:9/v1.mp4"]
    assert counts["duplicate_ids"] == 1 and counts["unreadable_records"] == 2
    with pytest.raises(ValueError, match="unknown format"):
        list(read_requests("vimeo:x"))


def test_config_section_and_overrides():
    cfg = load_config(BuildConfig, None, ["download.max_height=480", "download.subtitles=[en, de]"]).download
    assert cfg.max_height == 480 and cfg.subtitles == ["en", "de"]
    assert DownloadConfig().max_height == 720 and DownloadConfig().subtitles == ["en"]
    with pytest.raises(ValueError, match="url_template"):
        DownloadConfig(url_template="http://mirror/x.mp4")
    with pytest.raises(ValueError, match="backend"):
        DownloadConfig(backend="curl")


def test_reason_vocabulary_and_helpers():
    required = {"not_found", "forbidden", "unavailable", "private", "removed", "geo_blocked", "rate_limited",
                "timeout", "stalled", "too_large", "no_video_stream", "http_error", "extractor_error"}
    assert required <= set(REASONS) and PERMANENT <= set(REASONS) and not PERMANENT & RETRY_IN_RUN
    assert choose_backend("http://h/v/a.MP4", "auto") == "http"
    assert choose_backend("https://www.youtube.com/watch?v=abc", "auto") == "ytdlp"
    assert choose_backend("http://h/v/a.mp4", "ytdlp") == "ytdlp"
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1  # a date in the past: retry now
    assert [in_shard_range("abc", i, 4) for i in range(4)].count(True) == 1


def test_ytdlp_options_for_youtube(tmp_path):
    cfg = DownloadConfig(max_height=720, subtitles=["en"], max_bytes=123456, stall_timeout_s=42)
    opts = ytdlp_options(cfg, tmp_path, "100%_id", "/opt/ffmpeg")
    assert opts["format"] == format_selector(720)
    assert opts["format"].startswith("bv*[height<=720][ext=mp4]+ba[ext=m4a]/b[height<=720][ext=mp4]/")
    assert opts["format_sort"] == ["res:720", "ext:mp4:m4a"] and opts["merge_output_format"] == "mp4"
    assert opts["outtmpl"]["default"] == str(tmp_path / "100%%_id.%(ext)s")  # '%' of the id taken literally
    assert opts["writesubtitles"] and opts["writeautomaticsub"] and opts["subtitleslangs"] == ["en"]
    assert opts["subtitlesformat"] == "vtt" and opts["ffmpeg_location"] == "/opt/ffmpeg"
    assert opts["max_filesize"] == 123456 and opts["socket_timeout"] == 42.0 and opts["noplaylist"]
    assert opts["retries"] == 0  # lfvila retries with its own backoff and host pacing
    assert not ytdlp_options(DownloadConfig(subtitles=[]), tmp_path, "x", "f")["writesubtitles"]
    # yt-dlp itself accepts every option (it validates the format spec and output template here)
    import yt_dlp

    with yt_dlp.YoutubeDL(opts) as ydl:
        assert ydl.params["format"] == opts["format"]
        assert ydl.prepare_filename({"id": "x", "ext": "mp4", "title": "t"}) == str(tmp_path / "100%_id.mp4")


def test_section_format_is_the_best_direct_video_only_format_under_the_cap(tmp_path):
    """yt-dlp's own selection on YouTube-like formats (DASH https video-only, HLS, muxed): the sections
    are cut from a video-only https format <= max_height, mp4 first; fragment lists are never chosen."""
    import yt_dlp

    from lfvila.download.ytdlp import resolve_options, section_format_selector

    def fmt(fid, height, ext, protocol, vcodec="avc1", acodec="none"):
        return {"format_id": fid, "height": height, "width": height and height * 16 // 9, "ext": ext, "protocol": protocol,
                "url": f"https://media.example/{fid}", "vcodec": vcodec, "acodec": acodec}

    formats = [fmt("hls720", 720, "mp4", "m3u8_native", acodec="mp4a"), fmt("dash1080", 1080, "mp4", "https"),
               fmt("frag720", 720, "mp4", "http_dash_segments"), fmt("webm720", 720, "webm", "https", vcodec="vp9"),
               fmt("mp4720", 720, "mp4", "https"), fmt("mp4480", 480, "mp4", "https"),
               fmt("muxed360", 360, "mp4", "https", acodec="mp4a"), fmt("audio", None, "m4a", "https", vcodec="none",
                                                                         acodec="mp4a")]
    info = {"id": "abc", "title": "t", "extractor": "youtube", "extractor_key": "Youtube", "webpage_url": "https://y/abc",
            "formats": formats}
    opts = resolve_options(DownloadConfig(max_height=720, subtitles=["en"]), tmp_path, "abc", "/opt/ffmpeg")
    assert opts["skip_download"] and opts["format"] == section_format_selector(720) and opts["writesubtitles"]
    with yt_dlp.YoutubeDL({**opts, "simulate": True}) as ydl:
        chosen = ydl.process_ie_result(dict(info), download=False)
    assert chosen["format_id"] == "mp4720"
    only_hls = dict(info, formats=[formats[0], formats[2]])
    with yt_dlp.YoutubeDL({**opts, "simulate": True}) as ydl, pytest.raises(yt_dlp.utils.ExtractorError, match="Requested format is not available"):
        ydl.process_ie_result(only_hls, download=False)  # a no_video_stream row: nothing to cut by ranges


@pytest.mark.parametrize("message, reason", [
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", "private"),
    ("ERROR: [youtube] abc: Video unavailable", "unavailable"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "removed"),
    ("ERROR: [youtube] abc: Video unavailable. This video is no longer available because the YouTube account "
     "associated with this video has been terminated.", "removed"),
    ("ERROR: [youtube] abc: The uploader has not made this video available in your country", "geo_blocked"),
    ("ERROR: [vimeo] 1: This video is not available from your location due to geo restriction", "geo_blocked"),
    ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "forbidden"),
    ("ERROR: [generic] a: Unable to download webpage: HTTP Error 404: Not Found", "not_found"),
    ("ERROR: [youtube] abc: HTTP Error 429: Too Many Requests", "rate_limited"),
    ("ERROR: [youtube] abc: Requested format is not available", "no_video_stream"),
    ("ERROR: Unsupported URL: http://example.com/", "extractor_error"),
])
def test_ytdlp_error_messages_map_to_reasons(message, reason):
    assert classify_error(message) == reason
