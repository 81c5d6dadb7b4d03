"""The datasource: plays cameras (video files, synthetic scenes with ground truth, real cameras)."""
