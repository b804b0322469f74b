"""Evaluation: sliding-window prediction, mIoU and its reports, bootstrap intervals, adapter analysis."""
