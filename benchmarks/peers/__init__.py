"""Drivers that time other projects (torchcfm, the official GDSS code) beside ours."""
