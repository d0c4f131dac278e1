"""Batch segmentation of many rasters (`farslip segment-batch`): in-process or scaled out on Ray."""
