"""Text for calibration and evaluation: named and local corpora (`corpora`), and seeded calibration windows
(`calibration`)."""
