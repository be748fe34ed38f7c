"""dpufleet: an open, vendor-neutral control plane for fleets of DPUs/IPUs."""

__version__ = "0.1.0"
API_GROUP = "dpufleet.io"
API_VERSION = "dpufleet.io/v1alpha1"
