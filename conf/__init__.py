# The config package: importing it registers the typed schemas in Hydra's ConfigStore.
import mmtrain.config  # noqa: F401
