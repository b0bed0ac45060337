#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){ long x=0,N=1000000000; double t=now();
 for(long n=0;n<N;n++){ __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0" : "+r"(x)); }
 t=now()-t; printf("%.3f GHz\n", N*4.0/t/1e9); return x==0; }
