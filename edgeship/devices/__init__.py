"""Devices and deploys: the Raspberry Pi over SSH, the emulated Pi, and what ships to them.

Above the benchmarks layer (a device bench stores results through it), below the CLI.
"""
