# The dependencies of speq::speq, found the same way by speq's own build and by its installed
# package config (speqConfig.cmake includes this file).
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.3 NO_MODULE)
find_dependency(xsimd)
find_dependency(OpenMP COMPONENTS CXX)
find_dependency(nlohmann_json 3)
find_dependency(ZLIB)

# Debian 12's xsimd package exports a target that links a library "xtl" which xsimd 8 does not
# need and Debian does not install: drop that link so that linking works without libxtl-dev.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_speq_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_speq_xsimd_links)
    list(REMOVE_ITEM _speq_xsimd_links xtl)
    set_target_properties(xsimd PROPERTIES INTERFACE_LINK_LIBRARIES "${_speq_xsimd_links}")
  endif()
endif()
