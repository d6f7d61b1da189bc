"""Readers, planning into work units, stage list, runners (local / Ray Data) and the build."""
