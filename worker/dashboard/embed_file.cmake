# Turns a file into a C++ header holding its bytes (the dashboard's page is a
# real .html file in the source tree, compiled into the binary):
#   cmake -DINPUT=page.html -DOUTPUT=page.h -DNAME=kPage -P embed_file.cmake
# defines `unsigned char kPage[]` (NUL-terminated) and `size_t kPageSize`
# (without the NUL) in namespace gradacc.
file(READ "${INPUT}" hex HEX)
# 16 bytes a line.
string(LENGTH "${hex}" length)
set(bytes "")
set(offset 0)
while(offset LESS length)
  string(SUBSTRING "${hex}" ${offset} 32 line)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," line "${line}")
  string(APPEND bytes "    ${line}\n")
  math(EXPR offset "${offset} + 32")
endwhile()
get_filename_component(source "${INPUT}" NAME)
set(content "// Generated from ${source} by embed_file.cmake at build time: edit ${source}.
#pragma once

#include <cstddef>

namespace gradacc {

inline constexpr unsigned char ${NAME}[] = {
${bytes}    0x00};
inline constexpr size_t ${NAME}Size = sizeof(${NAME}) - 1;

}  // namespace gradacc
")
file(WRITE "${OUTPUT}" "${content}")
