"""``lfvila download``: fetch the videos (and caption tracks) a corpus needs, every one accounted for.

- ``config``: the ``download:`` section of a recipe (``DownloadConfig``);
- ``sources``: which (video_id, url) pairs each source format names;
- ``ytdlp``: every yt-dlp / YouTube-specific option, in one place;
- ``fetch``: one video's download (plain HTTP for direct files, yt-dlp otherwise), the reason vocabulary;
- ``sections``: partial downloads (time ranges of the runs) and their ``sections.json``;
- ``run``: the whole run: selection, resume, concurrency, per-host pacing, accounting.
"""
