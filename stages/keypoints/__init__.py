"""Stage two: lift cached views (and features) to 3D keypoints, learned by reconstruction."""
