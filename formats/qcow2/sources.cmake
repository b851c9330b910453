# Sources of the qcow2 driver.
set(VDK_QCOW2_SOURCES
)
