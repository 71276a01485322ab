/* Command that logs to stderr and exits with status 3. */
#include <stdio.h>

int main(void) {
    fputs("fail_exit: something went wrong\n", stderr);
    return 3;
}
