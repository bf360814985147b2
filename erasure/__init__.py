"""Concept erasure (ESD, Gandikota et al. 2023) as LoRAs: a stage of its own, ``python -m erasure.erase``.

* ``config``: the ``erase:`` section (:class:`EraseConfig`);
* ``esd``: the ESD objective, the partial sampling that makes x_t, the layers ESD-x and ESD-u adapt, the loop;
* ``erase``: the entry point, one LoRA folder per erasure.
"""
