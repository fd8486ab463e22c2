"""Real devices in a real world: the device catalogue (:mod:`~.catalogue`), what a round
costs in time and energy (:mod:`~.energy`), when devices are on (:mod:`~.trace`,
:mod:`~.availability`) and fleets from the user's own inventory (:mod:`~.inventory`).
Plain data and arithmetic: nothing here imports the scenario, Flower or torch."""
