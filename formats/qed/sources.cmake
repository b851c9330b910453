# Sources of the QED driver.
set(VDK_QED_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/qed.c
  ${CMAKE_CURRENT_LIST_DIR}/header.c
  ${CMAKE_CURRENT_LIST_DIR}/table.c
  ${CMAKE_CURRENT_LIST_DIR}/io.c
  ${CMAKE_CURRENT_LIST_DIR}/zero.c
  ${CMAKE_CURRENT_LIST_DIR}/resize.c
  ${CMAKE_CURRENT_LIST_DIR}/measure.c
  ${CMAKE_CURRENT_LIST_DIR}/check.c
  ${CMAKE_CURRENT_LIST_DIR}/repair.c
  ${CMAKE_CURRENT_LIST_DIR}/inspect.c
  ${CMAKE_CURRENT_LIST_DIR}/check-slot.c
)
