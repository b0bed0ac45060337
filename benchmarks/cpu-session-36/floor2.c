#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((aligned(64))) int8_t X[4][1536];
#define ROW(a, off) a=_mm256_add_epi32(a,_mm256_madd_epi16(_mm256_maddubs_epi16(q,_mm256_load_si256((const __m256i*)(off))),s));
int main(){
  for(int r=0;r<4;r++)for(int i=0;i<1536;i++)X[r][i]=(i*7+r)&63;
  __m256i q0=_mm256_set1_epi8(3), s0=_mm256_set1_epi16(1);
  long N=50000000; __m256i tot=_mm256_setzero_si256(); double t=now();
  for(long n=0;n<N;n++){
    int b=n&3;
    __m256i a0=_mm256_setzero_si256(),a1=a0,a2=a0,a3=a0;
    __asm__ volatile("" : "+x"(q0),"+x"(s0));
    for(int k=0;k<8;k++){
      __m256i q=_mm256_add_epi8(q0,_mm256_set1_epi8(k)); __m256i s=_mm256_add_epi16(s0,_mm256_set1_epi16(k));
      const int8_t* off = &X[0][b*256+32*k];
      ROW(a0,off) ROW(a1,off+1536) ROW(a2,off+3072) ROW(a3,off+4608)
    }
    tot=_mm256_add_epi32(tot,_mm256_add_epi32(_mm256_add_epi32(a0,a1),_mm256_add_epi32(a2,a3)));
  }
  t=now()-t; int x[8]; _mm256_storeu_si256((__m256i*)x,tot);
  printf("%.2f ns per row-block (%d)\n", t/(N*4.0)*1e9, x[0]);
}
