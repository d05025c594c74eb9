"""TensorFlow Datasets: the reader of a prepared dataset, and build_tfds_dataset to prepare one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from jaxlm.config import DataConfig
from jaxlm.data.quiet_tensorflow import tensorflow
from jaxlm.data.sources.records import PAIR_TASKS, Record, _Labels, _where
from jaxlm.errors import DataError


def _tfds_records(data: DataConfig, split: str, labels: _Labels) -> Iterator[Record]:
    tensorflow()  # quietly, before TensorFlow Datasets imports it
    import tensorflow_datasets as tfds

    name, data_dir = data.tfds_name, data.tfds_data_dir or None
    if not name:
        raise DataError("data.tfds_name is empty: name a prepared TFDS dataset")
    try:
        dataset, info = tfds.load(
            name, split=split, data_dir=data_dir, download=False, with_info=True
        )
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, FileNotFoundError):
        where = f"data_dir {data_dir}" if data_dir else "the default TFDS data_dir"
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in {where}, and jaxlm never downloads: "
            f"prepare it (`tfds build {name} --data_dir DIR`, or jaxlm.data.sources."
            "build_tfds_dataset from local files) and set data.tfds_data_dir"
        ) from None
    except ValueError as e:  # an unknown split
        raise DataError(f"TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    fields = [data.text_field]
    if data.task == "classification":
        fields.append(data.label_field)
    elif data.task in PAIR_TASKS:
        fields.append(data.target_field)
    for key in fields:
        if key not in info.features:
            raise DataError(
                f"TFDS dataset {name!r} has no feature {key!r} "
                f"(features: {', '.join(sorted(info.features))})"
            )
    label_feature = info.features[data.label_field] if data.task == "classification" else None
    class_names = list(getattr(label_feature, "names", None) or [])
    if class_names and not labels.given:
        labels.source_names = class_names
    if data.max_examples and data.shuffle_seed is None:
        dataset = dataset.take(data.max_examples)
    for number, example in enumerate(tfds.as_numpy(dataset)):
        where = (f"TFDS {name} {split}", f"example {number}")
        values = [_tfds_value(example[key], key, where) for key in fields]
        if data.task == "classification" and class_names:
            values[1] = class_names[values[1]]
        yield (values[0] if len(values) == 1 else tuple(values)), where


def _tfds_value(value, key: str, where: tuple):
    """A TFDS feature value as str (text) or int (a class index)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{_where(where)}: feature {key!r} is not UTF-8 text (bad byte at offset {e.start})"
            ) from None
    if getattr(value, "ndim", None) == 0 and value.dtype.kind in "iu":
        return int(value)
    raise DataError(f"{_where(where)}: feature {key!r} is neither text nor a class index")


def build_tfds_dataset(
    name: str,
    data_dir: str | Path,
    splits: Mapping[str, Sequence[Mapping[str, object]]],
    labels: Sequence[str] = (),
    label_field: str = "label",
    version: str = "1.0.0",
) -> Path:
    """Prepares a TFDS dataset from local examples (dicts of str and int values) in `data_dir`,
    where the tfds source loads it (`data.tfds_name=name`, `data.tfds_data_dir=data_dir`).

    Strings become Text features; `label_field` becomes a ClassLabel of `labels` when given.
    Example order is kept. Returns the dataset's folder.
    """
    import numpy as np

    tensorflow()  # quietly, before TensorFlow Datasets imports it
    import tensorflow_datasets as tfds

    first = next((examples[0] for examples in splits.values() if examples), None)
    if first is None:
        raise DataError(f"no examples to build the TFDS dataset {name!r} from")
    features = {}
    for key, value in first.items():
        if key == label_field and labels:
            features[key] = tfds.features.ClassLabel(names=list(labels))
        elif isinstance(value, str):
            features[key] = tfds.features.Text()
        else:
            features[key] = tfds.features.Scalar(dtype=np.int64)
    try:
        builder = tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=tfds.features.FeaturesDict(features),
            split_datasets={
                split: [(str(i), dict(example)) for i, example in enumerate(examples)]
                for split, examples in splits.items()
            },
            data_dir=str(data_dir),
            disable_shuffling=True,
        )
    except RuntimeError as e:
        raise DataError(f"cannot build TFDS dataset {name!r}: {str(e).splitlines()[0]}") from None
    return Path(builder.data_dir)
