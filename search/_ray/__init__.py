"""Ray Tune glue, imported lazily by ``search.tuner`` only: these modules import Ray at the top."""
