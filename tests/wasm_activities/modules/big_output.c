/* Command that writes a 10 MiB JSON string to stdout. */
#include <stdio.h>
#include <string.h>

int main(void) {
    static char block[65536];
    memset(block, 'a', sizeof block);
    putchar('"');
    for (int i = 0; i < 160; i++) fwrite(block, 1, sizeof block, stdout);
    putchar('"');
    return 0;
}
