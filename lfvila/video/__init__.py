"""Video work: find a long-form video's source files and decode frames on a fixed time grid with ffmpeg."""
