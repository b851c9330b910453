-- vdk.testing: fault injection for specs (bindings/ltesting.c).
--
-- The C module registers itself as package.preload["vdk.testing"] when
-- vdk.core loads in a build made with VDK_TESTING; this file only makes
-- `require "vdk.testing"` work before anything else loaded vdk.core.
require "vdk.core"
local loader = package.preload["vdk.testing"]
if not loader then
  error("vdk.testing: this build has no test module (configure with -DVDK_TESTING=ON)", 2)
end
return loader("vdk.testing")
