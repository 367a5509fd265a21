"""Tests of damaged and shared stores; they all render a small store (pybullet)."""
