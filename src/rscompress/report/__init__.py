"""Reports: one self-contained HTML file (plots embedded) and its markdown twin."""
