"""Manipulation: reconstruct the generated object, rig it with its discovered keypoints, pose it.

Keypoints and object share the cache's world frame, so no registration is needed
(docs/METHOD.md "Manipulation").
"""
