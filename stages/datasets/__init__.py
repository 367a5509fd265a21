"""Readers of real datasets for stage one: images plus what each dataset knows about them.

Each reader turns a dataset root into image sources that carry a `SourceAnnotation`
(ground-truth joints, a box to crop to, a foreground mask where the dataset has one)
and the `GroundTruthSpec` of the store. `registry.read_dataset` picks the reader by
name ('h36m', 'cub', 'dogs'). This package imports no reader here, so that
`stages.sources` can use `annotations` without an import cycle.
"""
