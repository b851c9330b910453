# Test registration: every tests/c/test_*.c is a C test linked with the
# engine; every spec/*_spec.lua is a busted run. Specs find the build through
# VDK_BUILD_DIR (module, launcher) and run under lua5.4, or under the
# launcher itself in sanitizer builds (so ASan sees the module's code).
file(GLOB VDK_C_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/c/test_*.c)
foreach(src ${VDK_C_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE vdk_engine)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME c/${name} COMMAND ${name})
endforeach()

find_program(BUSTED busted)
if(VDK_SANITIZE)
  set(VDK_SPEC_LUA "${CMAKE_BINARY_DIR}/vdk run")
else()
  set(VDK_SPEC_LUA "lua5.4")
endif()
file(GLOB VDK_SPECS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/*_spec.lua)
foreach(spec ${VDK_SPECS})
  get_filename_component(name ${spec} NAME_WE)
  add_test(NAME spec/${name}
           COMMAND ${BUSTED} --lua=${VDK_SPEC_LUA} --helper=spec/helper.lua
                   -o utfTerminal ${spec}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(spec/${name} PROPERTIES
    ENVIRONMENT "VDK_BUILD_DIR=${CMAKE_BINARY_DIR};VDK_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
    TIMEOUT 900)
endforeach()
