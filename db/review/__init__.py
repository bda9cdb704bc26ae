"""The safety review queue, one module per idea.

- ``items``: put an exchange in the queue (``ReviewItemRecord`` is a chat turn's item, stored by
  ``db.chat.store_turn``), read an item, the state error all review writes share.
- ``queue``: what reviewers browse: the filter, the ordered listing, the counters, the filter widgets' values.
- ``claims``: take an item (the next one or a chosen one) atomically, give it back.
- ``decisions``: immutable decisions (one or many), the decision in force, an item's decision history.
- ``samples``: the blind second review of a share of decided items.
- ``quality``: the reads behind the quality loop: agreement pairs and decided findings.

Which sides of an exchange keep raw text is ``db.safety.raw_text_directions``.

Who may claim or decide (roles, no self-review) is the console's job; these modules keep the data
consistent under concurrency and audit every change.
"""
