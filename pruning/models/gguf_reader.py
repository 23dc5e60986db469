"""A GGUF reader whose metadata costs memory in proportion to the file's metadata bytes, not to its element count.

gguf's own `GGUFReader` makes one numpy view per element of every metadata array: Gemma-3's 262,144-token
vocabulary (tokens, scores, token types) becomes about a million views, ~700 MB, and transformers parses a GGUF three
times during a conversion (config, weights map, tokenizer). `LeanGGUFReader` is the same reader with each array's
parts made on demand: the element values are read from the memory map only when indexed, so `reader.fields` has the
same shape (parts, data indices, types) for every consumer, transformers' `read_field` and `_gguf_parse_value`
included. `lean_gguf_parsing()` makes transformers' loaders use it too.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField


class _ArrayParts(Sequence[Any]):
    """The parts list of one array field, [key length, key, type, item type, count, then the items' parts], with the
    items' parts made when indexed: one view per number, or a (length, bytes) pair of views per string."""

    def __init__(self, head: list[np.ndarray[Any, Any]], item: Any, items: int, per_item: int) -> None:
        self.head, self.item, self.items, self.per_item = head, item, items, per_item

    def __len__(self) -> int:
        return len(self.head) + self.items * self.per_item

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(index)
        if position < len(self.head):
            return self.head[position]
        return self.item(*divmod(position - len(self.head), self.per_item))


class LeanGGUFReader(GGUFReader):
    """`GGUFReader` with metadata arrays of numbers or strings kept as memory-map offsets (see the module docstring);
    nested arrays and byte-swapped files take the original path."""

    def _build_fields(self, offs: int, count: int) -> int:
        for _ in range(count):
            start = offs
            key_length, key = self._get_str(offs)
            offs += int(key_length.nbytes + key.nbytes)
            raw_type = self._get(offs, np.uint32)
            offs += int(raw_type.nbytes)
            head = [key_length, key, raw_type]
            lean = self._lean_array(offs, head) if raw_type[0] == GGUFValueType.ARRAY else None
            if lean is None:
                size, value_parts, indices, types = self._get_field_parts(offs, raw_type[0])
                parts: Sequence[Any] = head + value_parts
                data: Sequence[int] = [index + len(head) for index in indices]
            else:
                size, parts, data, types = lean
            self._push_field(ReaderField(start, str(bytes(key), encoding="utf-8"), parts,  # type: ignore[arg-type]
                                         data, types), skip_sum=True)  # type: ignore[arg-type]
            offs += size
        return offs

    def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
        """gguf's own, after checking that every tensor's data (offset + size, from the table) lies in the file: a
        download cut short is named as such, not as a numpy reshape error."""
        end = start_offs
        for field in fields:
            _name_length, _name, _dimensions, shape, raw_type, offset = field.parts
            block_size, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_type[0]))]
            end = max(end, start_offs + int(offset[0]) + int(np.prod(shape)) * block_bytes // block_size)
        if end > len(self.data):
            raise ValueError(f"truncated: its tensor table needs {end:,} bytes, the file has {len(self.data):,}")
        super()._build_tensors(start_offs, fields)

    def _lean_array(self, offs: int, head: list[Any]) -> tuple[int, _ArrayParts, range, list[GGUFValueType]] | None:
        """An array of numbers or strings as (bytes it spans, its parts, their data indices, its types)."""
        raw_item_type = self._get(offs, np.uint32)
        length = self._get(offs + 4, np.uint64)
        count, item_type = int(length[0]), GGUFValueType(int(raw_item_type[0]))
        header = [*head, raw_item_type, length]
        first = len(header)
        types = [GGUFValueType.ARRAY, *([item_type] if count else [])]
        items_start = offs + 12
        number = self.gguf_scalar_to_np.get(item_type)
        if number is not None:
            values = self._get(items_start, number, count)
            parts = _ArrayParts(header, lambda index, _: values[index:index + 1], count, 1)
            return 12 + int(values.nbytes), parts, range(first, first + count), types
        if item_type != GGUFValueType.STRING or self.byte_order != "I":
            return None
        # Each string: uint64 length, then its bytes; one pass finds where each starts.
        buffer = memoryview(self.data)  # type: ignore[arg-type]
        starts = np.empty(count, dtype=np.int64)
        lengths = np.empty(count, dtype=np.int64)
        position = items_start
        for index in range(count):
            (size,) = struct.unpack_from("<Q", buffer, position)
            starts[index], lengths[index] = position, size
            position += 8 + size

        def string_part(index: int, which: int) -> np.ndarray[Any, Any]:
            if which == 0:
                return self._get(int(starts[index]), np.uint64)
            return self._get(int(starts[index]) + 8, np.uint8, int(lengths[index]))

        return position - offs, _ArrayParts(header, string_part, count, 2), range(first + 1, first + 2 * count, 2), \
            types


@contextlib.contextmanager
def lean_gguf_parsing() -> Iterator[None]:
    """Within: `gguf.GGUFReader` is `LeanGGUFReader`, so transformers' GGUF config, weight-map and tokenizer loaders
    (which import it when called) parse with it too."""
    import gguf

    original = gguf.GGUFReader
    gguf.GGUFReader = LeanGGUFReader  # type: ignore[misc]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]
